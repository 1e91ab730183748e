"""What a run reports: runs.csv, the generated tables and plots, published numbers, run
comparison, device profiles, the dry-run estimate and sweep frontiers.

Imports: config, errors, atomic_files, ``method.schedules`` (schedule costs); never stage,
train, evaluation or the entry layer.
"""
