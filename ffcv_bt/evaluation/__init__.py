"""The evaluation protocols: the trained ones (linear probe, semi-supervised 1% / 10%:
``trained``), kNN (``knn``) and loading backbone weights (ours, torchvision, random).

Imports: config, errors, data, method, distributed, stage; never train or the
entry layer.
"""
