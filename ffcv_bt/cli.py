"""The one entry layer of every command (run.py, write_dataset.py, ``python -m
ffcv_bt.train.pretrain`` / ``ffcv_bt.evaluation`` and the SLURM task): the same exit codes
and the same one-line errors everywhere.

* :class:`ffcv_bt.errors.UserError`: ``error: <message>`` on stderr, its ``exit_code``
  (2 for bad input, 1 for a diverged run); the traceback only with ``--debug``.
* :class:`ffcv_bt.errors.Preempted`: its message, exit 143 (as a SIGTERM'd process).
* KeyboardInterrupt: exit 130. Anything else is a bug: Python's traceback, exit 1.
"""
from __future__ import annotations

import sys
import traceback
from typing import Callable, Sequence

from ffcv_bt.errors import Preempted, UserError

DEBUG_FLAG = "--debug"


def run_command(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv without --debug)`` and turn what it raises into an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args
    args = [a for a in args if a != DEBUG_FLAG]
    try:
        return int(main(args) or 0)
    except UserError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Preempted as exc:
        print(str(exc), file=sys.stderr)
        return Preempted.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
