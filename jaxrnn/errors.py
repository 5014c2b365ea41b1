"""The exceptions a user meets: a JaxrnnError is printed by the CLI as one line, exit status 2."""

import signal


class JaxrnnError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""


class DataError(JaxrnnError):
    """The corpus cannot be found, read or cut into windows."""


class ConfigError(JaxrnnError):
    """A setting is out of range or two settings conflict."""


class CheckpointError(JaxrnnError):
    """A checkpoint is missing, unreadable, or belongs to another model."""


class Damaged(CheckpointError):
    """A checkpoint with a file that cannot be read, or arrays that differ from those saved. `problem`
    names the checkpoint and what failed; the advice after it can be made concrete by the caller."""

    def __init__(self, epoch: int, run_dir: object, what: str,
                 advice: str = "pass --step with another checkpoint, or resume the run (it sets damaged ones aside)"):
        self.epoch, self.run_dir, self.what = epoch, run_dir, what
        self.problem = f"checkpoint {epoch} in {run_dir} is damaged ({what})"
        super().__init__(f"{self.problem}; {advice}")


class RunMismatch(CheckpointError):
    """A checkpoint that belongs to another run: another config or another vocab."""


class Stopped(Exception):
    """Training stopped on a signal after saving the checkpoint of `epoch` (an epoch, or a step: `unit`)."""

    def __init__(self, signum: int, epoch: int, run_dir: object = None, unit: str = "epoch") -> None:
        self.signum, self.epoch, self.run_dir = signum, epoch, run_dir
        super().__init__(f"stopped by {signal.Signals(signum).name} after {unit} {epoch}")
