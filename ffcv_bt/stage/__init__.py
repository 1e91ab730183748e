"""What every stage (pretraining, linear / semi-supervised evaluation, kNN) shares: the
skeleton (skip when finished, run, broadcast the result, the per-stage duties), atomic
checkpoints and mixed precision.

Imports: torch, ``ffcv_bt.errors``, ``ffcv_bt.atomic_files``, ``ffcv_bt.distributed``; never
train, evaluation, reporting or the entry layer.
"""
