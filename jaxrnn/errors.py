"""The exceptions a user meets: a JaxrnnError is printed by the CLI as one line, exit status 2."""

import errno
import functools
import signal
import sys


@functools.cache
def say_once(line: str) -> None:
    """Print a note or warning on stderr the first time this process has it (a corpus read twice, a
    layout made for each compiled function, warn once)."""
    print(line, file=sys.stderr, flush=True)


class JaxrnnError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""


class DataError(JaxrnnError):
    """The corpus cannot be found, read or cut into windows."""


class ConfigError(JaxrnnError):
    """A setting is out of range or two settings conflict."""


class SettingError(ConfigError):
    """One setting's value is of the wrong type or out of range: `key` (a Config field), `problem` (what
    is wrong with the value) and `advice`, worded for a flag unless the caller names the file it came from."""

    def __init__(self, key: str, problem: str, advice: str) -> None:
        self.key, self.problem, self.advice = key, problem, advice
        super().__init__(f"--{key.replace('_', '-')} {problem}; {advice}")


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
    """Training stopped on a signal at the checkpoint of `epoch` (an epoch, or a step: `unit`; None: before
    the first checkpoint), after its chunk or, `compiling`, while the next one compiled; `again` is the
    command that goes on, if not 'jaxrnn train --resume RUN_DIR' (a sweep's: the same sweep again)."""

    def __init__(self, signum: int, epoch: int | None, run_dir: object = None, unit: str = "epoch",
                 compiling: bool = False, again: str | None = None) -> None:
        self.signum, self.epoch, self.run_dir, self.unit, self.compiling = signum, epoch, run_dir, unit, compiling
        how = f"stopped by {signal.Signals(signum).name}" + (" while compiling," if compiling else "")
        again = again or f"'jaxrnn train --resume {run_dir}'"
        if epoch is None:
            text = f"{how} before the first checkpoint" if run_dir else f"{how} before training began"
            goes_on = f"; {again} starts it again" if run_dir else ""
        else:
            text = f"{how} after {unit} {epoch}" + (", its checkpoint saved" if run_dir else "")
            goes_on = f"; resume with {again}" if run_dir else ""
        super().__init__(text + goes_on)


_CAUSES = {  # errno -> how its message reads, and what to do about it (for a path P)
    errno.ENOSPC: ("No space left on device", "free disk space on the filesystem of {}"),
    errno.EDQUOT: ("Disk quota exceeded", "free space within your disk quota for {}"),
    errno.EACCES: ("Permission denied", "make {} writable"),
    errno.EPERM: ("Operation not permitted", "make {} writable"),
    errno.EROFS: ("Read-only file system", "put {} on a writable filesystem"),
}


def write_failure(e: BaseException, where: object) -> tuple[str, str]:
    """(why, what to do) for a failed write under `where`, by its cause: an OSError's errno, found in the
    exception, what it was raised from, or the message of a library that wrapped it (orbax, TensorStore)."""
    chain, seen = e, set()
    while chain is not None and id(chain) not in seen:  # a chain can loop (`raise e from e`)
        seen.add(id(chain))
        if isinstance(chain, OSError) and chain.errno in _CAUSES:
            return chain.strerror or _CAUSES[chain.errno][0], _CAUSES[chain.errno][1].format(where)
        chain = chain.__cause__ or chain.__context__
    text = str(e)
    for message, advice in _CAUSES.values():
        if message.lower() in text.lower():
            return message, advice.format(where)
    why = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {text}"
    return why, f"check that {where} can be written"
