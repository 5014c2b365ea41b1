"""Deterministic fault points: `JAXRNN_FAULT=POINT:N[:SIGNAL,...]` makes a run signal itself at a named moment
of the save of its checkpoint N, so that a test stops it exactly there instead of racing it by polling.

POINT is `save` (checkpoint N is due and the one before it complete; nothing of N written yet), `saving`
(every file of N written into orbax's temporary directory, not yet renamed) or `saved` (N renamed to its
final name: complete). SIGNAL defaults to SIGKILL; several, comma-separated, are sent 10 ms apart (a
second SIGINT). Unset, nothing here runs: a run checks the variable once.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from typing import Any, NamedTuple

from jaxrnn.errors import ConfigError

ENV = "JAXRNN_FAULT"
POINTS = ("save", "saving", "saved")


class Fault(NamedTuple):
    point: str
    checkpoint: int
    signals: tuple[signal.Signals, ...]


def parse(spec: str) -> Fault:
    """`saving:4`, `save:2:SIGINT,SIGINT` -> a Fault."""
    point, _, rest = spec.partition(":")
    n, _, names = rest.partition(":")
    try:
        sigs = tuple(signal.Signals[s] for s in names.split(",")) if names else (signal.SIGKILL,)
        if point not in POINTS or not n.isdigit():
            raise KeyError(point)
    except KeyError:
        raise ConfigError(f"{ENV}={spec!r} is not POINT:N[:SIGNAL,...] with POINT one of {', '.join(POINTS)}; "
                          f"unset {ENV}") from None
    return Fault(point, int(n), sigs)


@functools.cache
def planned() -> Fault | None:
    """The fault this process is asked for, if any."""
    spec = os.environ.get(ENV)
    return parse(spec) if spec else None


def reach(point: str, checkpoint: int) -> None:
    """Signal this process if the planned fault is `point` of `checkpoint`."""
    fault = planned()
    if fault is not None and (fault.point, fault.checkpoint) == (point, checkpoint):
        for i, s in enumerate(fault.signals):
            time.sleep(0.01 if i else 0)
            os.kill(os.getpid(), s)


def temporary_path_class() -> Any:
    """For orbax's CheckpointManagerOptions: None (orbax's own) unless a `saving` or `saved` fault is planned;
    then orbax's atomic-rename path with the fault points around its rename."""
    if planned() is None or planned().point == "save":
        return None
    import orbax.checkpoint as ocp

    class FaultyRename(ocp.path.atomicity.AtomicRenameTemporaryPath):
        async def finalize(self, *args: Any, **kwargs: Any) -> None:
            name = self._final_path.name
            if name.isdigit():
                reach("saving", int(name))
            await super().finalize(*args, **kwargs)
            if name.isdigit():
                reach("saved", int(name))

    return FaultyRename
