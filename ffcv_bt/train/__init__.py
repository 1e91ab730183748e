"""Pretraining: the loop (``pretrain``), its checkpoints, mixed precision and the online
monitor (kNN, RankMe, embedding std while training).

Imports: config, errors, data, augment, method, distributed, stage; never the
entry layer (runner, sweep, cli).
"""
