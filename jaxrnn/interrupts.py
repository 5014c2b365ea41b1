"""Ctrl-C and SIGTERM while jaxrnn works, and waits that signals can always end.

Python runs signal handlers in the main thread, between bytecodes: a main thread blocked inside XLA
(compiling, or waiting for a chunk's arrays) hears no Ctrl-C until XLA returns, which can be minutes, or
never (an allocation that blocks). So the long blocking calls run in a worker thread (`wait`) while the
main thread waits in short joins, where handlers run.

While `deferred()` is active (a training run), a first SIGINT or SIGTERM is recorded, and what it means
depends on what the run is doing: training a chunk, it stops after that chunk's checkpoint; waiting on a
compilation with nothing trained since the last checkpoint (`wait(..., abandon=True)`), it stops at once
(`Interrupted`; the compilation is left to its thread); once the run is complete (`Deferral.done`), it
changes nothing and the result is printed. A second signal exits at once with 128 + signum, as kill -9
would: saves are atomic and a resume cuts the metrics back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
POLL_S = 0.05  # how often a waiting main thread looks up: the longest a handler waits to run


class Interrupted(Exception):
    """A signal ended a wait that could be abandoned (a compilation): nothing trained is lost."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


@dataclass
class Deferral:
    """The signal a run has caught (0: none), and where the run is: `done` (complete: a signal changes
    nothing), `unsaved` (trained past its last checkpoint: a compilation waits to be finished)."""

    signum: int = 0
    done: bool = False
    unsaved: bool = False


_active: list[Deferral] = []  # signals are process-wide: the deferral in force, if any


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def deferred() -> Iterator[Deferral]:
    """Within, SIGINT and SIGTERM are recorded in the yielded Deferral (see the module docstring); nested,
    the outer one is yielded, its handlers installed again (`jax.distributed.initialize` puts a SIGTERM
    handler of its own in between). Outside the main thread signals stay as they are."""
    d = _active[-1] if _active else Deferral()

    def handler(signum: int, frame: Any) -> None:
        if d.signum:  # abort now, as kill -9 would
            log("jaxrnn: interrupted; the last saved checkpoint is kept")
            os._exit(128 + signum)
        d.signum = signum
        name = signal.Signals(signum).name
        log(f"jaxrnn: {name}: the run is complete; printing its result (signal again to abort)" if d.done else
            f"jaxrnn: {name}: stopping after this chunk's checkpoint; signal again to abort")

    try:
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield d
        return
    _active.append(d)
    try:
        yield d
    finally:
        _active.pop()
        for s, h in old.items():
            signal.signal(s, h)


def pending() -> int:
    """The signal the deferral in force has caught (0: none, or no deferral)."""
    return _active[-1].signum if _active else 0


def wait(fn: Callable[..., T], *args: Any, abandon: bool = False) -> T:
    """`fn(*args)` in a worker thread, the main thread waiting where signal handlers run (off the main
    thread, simply `fn(*args)`). With `abandon`, a signal that a deferral has caught, when nothing would be
    lost (the run has not trained past its last checkpoint), raises Interrupted and leaves `fn` to finish
    in its thread; outside a deferral Ctrl-C raises KeyboardInterrupt here as anywhere."""
    if threading.current_thread() is not threading.main_thread():
        return fn(*args)
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # handed to the waiting thread
            box["error"] = e

    worker = threading.Thread(target=work, name="jaxrnn-wait", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(POLL_S)
        d = _active[-1] if _active else None
        if abandon and d is not None and d.signum and not d.unsaved and worker.is_alive():
            raise Interrupted(d.signum)
    if "error" in box:
        raise box["error"]
    return box["value"]
