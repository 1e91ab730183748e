"""``python -m ffcv_bt.evaluation``: the evaluations' command line (``ffcv_bt.evaluation.cli``)."""
from ffcv_bt.cli import run_command
from ffcv_bt.evaluation.cli import main

raise SystemExit(run_command(main))
