"""Run a recipe end to end: pretrain, linear probe, semi-supervised 1% and 10%.

    python run.py                                   # the CPU demo (rules/demo.yaml)
    python run.py --config rules/1000ep.yaml        # one process (1 GPU or CPU)
    torchrun --nproc_per_node 8 run.py --config rules/fast-300ep.yaml
    python run.py --config rules/1000ep.yaml --slurm --slurm.nodes=2   # submitit
    python run.py --config rules/1000ep.yaml --dry-run                  # plan and cost

Each stage writes into the run folder and is skipped when its result exists; running the
same command again after a crash resumes the stage that was running (without --out, the
newest unfinished run of the same recipe and configuration is resumed). Every finished
evaluation appends one row to results/runs.csv and regenerates results/README.md and
results/cost_accuracy.png. User errors print one line ``error: ...`` (``--debug`` adds the
traceback); see ffcv_bt/runner.py and ffcv_bt/cli.py.
"""


from ffcv_bt.cli import run_command
from ffcv_bt.runner import main

if __name__ == "__main__":
    raise SystemExit(run_command(main))
