"""Pretraining: its model, loader and step on the stage skeleton (``pretrain``, ``step``),
the supervised ceiling (``supervised``) and the online monitor (kNN, RankMe, embedding std
while training).

Imports: config, errors, data, augment, method, distributed, stage, evaluation; never the
entry layer (runner, sweep, cli).
"""
