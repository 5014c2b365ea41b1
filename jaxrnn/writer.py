"""The one writer of a run directory, for a training run (`run.train`, `run.resume`) and for
`Trained.save`: it holds the directory for this process (`rundir.writing`, process 0 of several), writes
`config.json` and `metrics.jsonl` and what shows the run (`artifacts.py`) on process 0, and the
checkpoints through one orbax manager (`checkpoint.Saver`), every process its own shards.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxrnn import checkpoint, rundir
from jaxrnn.artifacts import Artifacts
from jaxrnn.config import Config
from jaxrnn.errors import CheckpointError, Damaged
from jaxrnn.parallel import is_primary, on_primary


class Writer:
    """Use as a context manager: entering holds the directory; leaving completes the last checkpoint, draws
    the last curves and lets the directory go, in that order, whatever ended the run."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir, self.primary = Path(run_dir), is_primary()
        self.saver: checkpoint.Saver | None = None
        self.artifacts: Artifacts | None = None
        self._open = contextlib.ExitStack()

    def __enter__(self) -> Writer:
        if self.primary:
            self._open.enter_context(rundir.writing(self.run_dir))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._open.close()

    def start(self, cfg: Config, force: bool, data_sha1: str | None) -> None:
        """Make the directory a new run's (`rundir.prepare`)."""
        on_primary(functools.partial(rundir.prepare, self.run_dir, cfg, force, data_sha1))

    def begin(self, curves: bool = True, tensorboard: bool = False) -> None:
        """Open the checkpoint manager and, on process 0, the artifacts (the plot's imports start now, while
        the first chunk compiles); `checkpoint` and `show` open them too if not yet open."""
        self._saver()
        if self.primary:
            self._artifacts(curves, tensorboard)

    def _saver(self) -> checkpoint.Saver:
        if self.saver is None:
            self.saver = self._open.enter_context(checkpoint.Saver(self.run_dir))
        return self.saver

    def _artifacts(self, curves: bool, tensorboard: bool = False) -> Artifacts:
        if self.artifacts is None:
            self.artifacts = self._open.enter_context(Artifacts(self.run_dir, curves, tensorboard))
        return self.artifacts

    def append(self, records: list[dict[str, Any]]) -> None:
        on_primary(functools.partial(rundir.append_metrics, self.run_dir, records))

    def rewrite(self, history: list[dict[str, Any]]) -> None:
        on_primary(functools.partial(rundir.rewrite_metrics, self.run_dir, history))

    def checkpoint(self, at: int, state: Any, meta: checkpoint.Meta) -> None:
        """Start saving the checkpoint numbered `at` (written in the background, complete before the next)."""
        self._saver().save(at, state, meta)

    def show(self, history: list[dict[str, Any]], records: list[dict[str, Any]], sample: Callable[[], str],
             curves: bool = True) -> None:
        """Redraw the curves, add `sample()`'s text to samples.txt, log `records` (process 0 only)."""
        if self.primary:
            self._artifacts(curves).update(history, records, sample())

    def set_aside(self, at: int, failed: CheckpointError | None, then: str = "trying an earlier one") -> None:
        """Move a checkpoint that cannot be restored out of the way (into RUN_DIR/damaged/), saying why."""
        on_primary(functools.partial(_set_aside, self.run_dir, at, failed, then))


def _set_aside(run_dir: Path, at: int, failed: CheckpointError | None, then: str) -> None:
    why = failed.problem if isinstance(failed, Damaged) else failed
    why = why or f"another process cannot restore checkpoint {at} in {run_dir}"
    print(f"jaxrnn: warning: {why}; moved it to {checkpoint.set_aside(run_dir, at)}, {then}", file=sys.stderr,
          flush=True)
