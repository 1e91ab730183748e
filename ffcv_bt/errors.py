"""The errors a user can fix, one base class, and the exit code each maps to.

Everything raised as a :class:`UserError` reaches the user as one line, ``error: <message>``
(see ``ffcv_bt.cli``), so its message must name the file, key or value at fault and say
what to do. Anything else that escapes is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A bad input or state the user can fix; ``exit_code`` is the process's exit status."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A recipe, protocol or override is invalid; the message names file and key."""


class DataError(UserError):
    """A dataset folder or file is missing, truncated or not what write_dataset.py writes."""


class CheckpointError(UserError):
    """No usable checkpoint to resume from, or one that belongs to another run."""


class BackboneLoadError(UserError, ValueError):
    """A backbone weights file is missing, corrupt or of another architecture."""


class RunFolderError(UserError):
    """A run folder cannot be used for this run (made with another configuration...)."""


class NonFiniteLoss(UserError):
    """The loss became NaN or inf; the last good checkpoint is kept."""

    exit_code = 1


class Preempted(Exception):
    """A stop signal (SLURM preemption, time limit) arrived and a checkpoint was saved.

    Not an error: the job is requeued (submitit) or the same command resumes it.
    """

    exit_code = 143
