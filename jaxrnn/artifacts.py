"""What a run directory shows people as it trains: `curves.png` (train and validation perplexity per
epoch), `samples.txt` (a greedy sample at each save and at the end) and, when asked, TensorBoard
events in `tb/` (tensorboardX, no TensorFlow). Each is refreshed at every checkpoint (the plot at
most every MIN_REDRAW_S seconds, and always at the end), the plot on a low-priority background
thread, so training does not wait for matplotlib."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from jaxrnn.errors import JaxrnnError, write_failure
from jaxrnn.plots import plot_curves
from jaxrnn.progress import unit_of

CURVES = "curves.png"
SAMPLES = "samples.txt"
TENSORBOARD = "tb"
MIN_REDRAW_S = 10.0  # a run saving every second gains nothing from a redraw each second, and loses CPU to it


def _import_matplotlib() -> None:
    import matplotlib.figure  # noqa: F401  (half a second of imports, done once per process)


def _lowest_priority() -> None:
    """Run the drawing thread at the lowest CPU priority (Linux schedules threads one by one), so on a
    busy machine matplotlib takes idle time from training, not time training needs."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not allowed: draw at normal priority
        pass


def summary_writer() -> type:
    """tensorboardX's SummaryWriter, or an error saying how to install it (checked before a run starts)."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise JaxrnnError("--tensorboard needs tensorboardX; pip install 'jaxrnn[tensorboard]'") from None
    return SummaryWriter


class Artifacts:
    """Writes the run's plot, samples and optional TensorBoard scalars into `run_dir`."""

    def __init__(self, run_dir: Path, curves: bool = True, tensorboard: bool = False) -> None:
        self.run_dir, self.curves = Path(run_dir), curves
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxrnn-plot", initializer=_lowest_priority)
        self.drawing: Future | None = None
        self.pending: list[dict[str, Any]] | None = None  # a history newer than the last drawing
        self.drawn_at = -math.inf
        if curves:
            self.pool.submit(_import_matplotlib)  # while the first chunk compiles, not when the first plot is due
        self.warned: set[tuple[str, str]] = set()
        self.tb = summary_writer()(str(self.run_dir / TENSORBOARD)) if tensorboard else None

    def update(self, history: list[dict[str, Any]], new: list[dict[str, Any]], sample: str) -> None:
        """After a checkpoint: redraw the curves from `history` (unless the last drawing is still going or
        began less than MIN_REDRAW_S ago: then a later update or `close` draws it), append `sample`,
        log the `new` epochs. What cannot be written is a warning: these files show a run, they are not it."""
        self.pending = list(history) if self.curves else None
        idle = self.drawing is None or self.drawing.done()
        if self.curves and idle and time.monotonic() - self.drawn_at >= MIN_REDRAW_S:
            self._draw()
        last = new[-1]
        u = unit_of(last)
        with self._warning(SAMPLES):
            with open(self.run_dir / SAMPLES, "a") as f:
                f.write(f"{u} {last[u]}  val ppl {last['val_ppl']:.2f}  {sample!r}\n")  # one line each
        if self.tb is not None:
            with self._warning(TENSORBOARD):
                for r in new:  # every number of the record, so a new metric shows without a change here
                    for key, v in r.items():
                        if key not in ("epoch", "step") and isinstance(v, (int, float)) and not isinstance(v, bool):
                            self.tb.add_scalar(key, v, r[unit_of(r)])
                self.tb.add_text("sample", sample, last[u])
                self.tb.flush()

    @contextlib.contextmanager
    def _warning(self, name: str) -> Iterator[None]:
        """Turn a failure to write `name` into a warning on stderr (once per file and cause), the run going on."""
        try:
            yield
        except (OSError, JaxrnnError) as e:
            why, advice = write_failure(e, self.run_dir)
            if (name, why) not in self.warned:
                self.warned.add((name, why))
                print(f"jaxrnn: warning: cannot write {self.run_dir / name} ({why}); the run goes on without it "
                      f"({advice} to have it again)", file=sys.stderr, flush=True)

    def __enter__(self) -> Artifacts:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _draw(self) -> None:
        if self.drawing is not None:
            with self._warning(CURVES):
                self.drawing.result()  # raises what the last drawing raised
        self.drawing = self.pool.submit(plot_curves, {"": self.pending}, self.run_dir / CURVES)
        self.pending, self.drawn_at = None, time.monotonic()

    def close(self) -> None:
        """Draw the final curves, wait for them and close the event file."""
        try:
            if self.pending is not None:
                self._draw()
            if self.drawing is not None:
                with self._warning(CURVES):
                    self.drawing.result()
        finally:
            self.pool.shutdown()
            if self.tb is not None:
                with self._warning(TENSORBOARD):
                    self.tb.close()
