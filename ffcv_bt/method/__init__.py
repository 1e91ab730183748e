"""The method: the model (ResNet backbone + projector), the Barlow Twins objective, LARS and
the pure schedules (learning rate per step, resolution per epoch).

Imports: torch and ``ffcv_bt.errors``, ``ffcv_bt.distributed`` (the objective's all-reduce);
no data loading, no files.
"""
