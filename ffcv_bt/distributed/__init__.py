"""Running on several processes: the process group and its device (``process_group``),
collectives, SyncBatchNorm, preemption signals and SLURM submission (submitit).

Imports: torch and ``ffcv_bt.errors``, ``ffcv_bt.config`` (slurm reads its recipe section).
"""
