"""What a run reports and costs: the clock and provenance (``accounting``), runs.csv, the
generated tables and plots, published numbers, run comparison, device profiles, the
dry-run estimate and sweep frontiers.

Imports: config, errors, atomic_files, ``method.schedules`` (the dry-run's schedule),
``distributed.collectives``; never train, evaluation or the entry layer.
"""
