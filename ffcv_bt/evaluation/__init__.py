"""The evaluation protocols: the trained ones (linear probe, semi-supervised 1% / 10%:
``trained``, on the stage skeleton), kNN (``knn``), loading backbone weights (ours,
torchvision, random), and their one entry point (``cli``: ``python -m ffcv_bt.evaluation``).

Imports: config, errors, data, method, distributed, stage; never train or the
entry layer.
"""
