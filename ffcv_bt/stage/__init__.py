"""What every stage (pretraining, linear / semi-supervised evaluation, kNN) shares: the
skeleton (skip when finished, run, broadcast the result, the per-stage duties), the loop of
the trained stages (``trainer``, with its ``meter``), atomic checkpoints, mixed precision,
the stage clock (device-hours) and provenance (device, libraries, code revision).

Imports: torch, ``ffcv_bt.errors``, ``ffcv_bt.atomic_files``, ``ffcv_bt.config``,
``ffcv_bt.distributed``, ``ffcv_bt.method``; never train, evaluation, reporting or the
entry layer.
"""
