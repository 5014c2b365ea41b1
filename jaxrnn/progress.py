"""Live training progress: a tqdm bar on a terminal, plain lines elsewhere, nothing with --quiet, and
with --json one JSON object per epoch on stdout. It is fed once per compiled chunk of epochs, with
metrics that training fetched anyway, so it adds no host sync; while a chunk runs longer than
HEARTBEAT_S (a long epoch of a big text), a thread says how long it has been running."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

from tqdm import tqdm

from jaxrnn import strict_json


def unit_of(record: dict[str, Any]) -> str:
    """What a metrics record counts by: 'epoch' (a whole number of epochs) or, for a run by steps, 'step'."""
    return "epoch" if isinstance(record.get("epoch"), int) else "step"


def describe(r: dict[str, Any]) -> str:
    """An epoch record as a short human line: perplexities, the validation loss in nats (with a group's
    spread over its replicas) and bits per character, speed and skipped steps."""
    speed = f"  {r['tokens_per_s'] / 1e3:.0f}k tok/s" if r.get("tokens_per_s") else ""
    skipped = f"  {r['skipped_steps']} steps skipped" if r.get("skipped_steps") else ""
    spread = f" ± {r['val_loss_std']:.3f}" if "val_loss_std" in r else ""  # a group's: its replicas' spread
    units = f"  val loss {r['val_loss']:.3f}{spread} ({r['val_bpc']:.3f} bpc)" if "val_bpc" in r else ""
    return f"train ppl {r['train_ppl']:.2f}  val ppl {r['val_ppl']:.2f}{units}{speed}{skipped}"


HEARTBEAT_S = 10.0  # the longest a run stays silent


def eta_text(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """Call it with each epoch's record as chunks finish (the first tells where a resumed run
    started); `close()` at the end. `mode` 'auto' draws a bar when `err` is a terminal and prints
    plain lines otherwise; 'quiet' shows nothing. `as_json` also prints each record as one JSON line
    on `out`."""

    def __init__(self, epochs: int, mode: str = "auto", as_json: bool = False, err: IO[str] | None = None,
                 out: IO[str] | None = None, unit: str = "epoch", span: int = 1,
                 heartbeat: float = HEARTBEAT_S) -> None:
        """`epochs` is the run's length in `unit` ('epoch', or 'step' for a run by steps), each record
        covering `span` of them (a run by steps: its evaluation interval); `heartbeat` the longest
        silence inside `watching`."""
        self.err, self.out = err or sys.stderr, out or sys.stdout
        if mode == "auto":
            mode = "bar" if self.err.isatty() else "lines"
        self.mode, self.as_json, self.epochs, self.unit, self.span = mode, as_json, epochs, unit, span
        self.start: int | None = None
        self.bar: tqdm | None = None
        self.trained_s = 0.0  # the epochs' own seconds: compiling, saving and sampling are not in them
        self.heartbeat, self.at = heartbeat, 0
        self.last_record = self.last_shown = time.monotonic()
        self.lock, self.stopped = threading.Lock(), threading.Event()
        self.doing = "running"  # what the awaited chunk is doing: 'compiling', then 'training' (`phase`)

    @classmethod
    def of(cls, cfg: Any, mode: str = "auto", as_json: bool = False) -> Progress:
        """The progress of a run of `cfg` (a Config): its length and unit, a record per evaluation."""
        return cls(cfg.length, mode, as_json, unit=cfg.unit, span=cfg.eval_every or 1)

    @contextlib.contextmanager
    def watching(self, start: int) -> Iterator[None]:
        """Inside, while the records after `start` are awaited, show a line (or refresh the bar) whenever
        `heartbeat` seconds pass without one."""
        if self.mode == "quiet":
            yield
            return
        self.at, self.stopped = start, threading.Event()
        self.last_record = self.last_shown = time.monotonic()
        threading.Thread(target=self._beat, name="jaxrnn-progress", daemon=True).start()
        try:
            yield
        finally:
            self.stopped.set()

    def _beat(self) -> None:
        while not self.stopped.wait(min(1.0, self.heartbeat / 4)):
            with self.lock:
                now = time.monotonic()
                if now - self.last_shown >= self.heartbeat and not self.stopped.is_set():
                    self._running(now)

    def _running(self, now: float) -> None:
        """Where the run is while a chunk trains: what it has done, what it is working on (compiling, at
        first) and for how long, and once a record has come, how long one unit took."""
        done = self.at - (self.start if self.start is not None else self.at)
        took = f" (one {self.unit} took {eta_text(self.trained_s / done)})" if done > 0 and self.unit == "epoch" else ""
        nxt = min(self.at + (1 if self.unit == "epoch" else self.span), self.epochs)
        working = f"{self.unit} {nxt}" if nxt == self.at + 1 else f"{self.unit}s {self.at + 1}-{nxt}"
        first = " (rate and ETA follow it)" if self.start is None and self.doing != "compiling" else ""
        text = f"{working} {self.doing} {eta_text(now - self.last_record)}{took}{first}"
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)
        else:
            print(f"{self.unit} {self.at}/{self.epochs} done; {text}", file=self.err, flush=True)
        self.last_shown = now

    def phase(self, doing: str) -> None:
        """What the awaited chunk is doing now ('compiling', 'training'), for the lines while it runs."""
        with self.lock:
            self.doing = doing

    def __call__(self, r: dict[str, Any]) -> None:
        with self.lock:
            self._show(r)
            self.at = r[self.unit]
            self.last_record = self.last_shown = time.monotonic()

    def _show(self, r: dict[str, Any]) -> None:
        if self.as_json:
            print(strict_json.dumps(r), file=self.out, flush=True)
        self.trained_s += r.get("seconds") or 0.0
        at = r[self.unit]
        if self.start is None:
            self.start = max(at - self.span, 0)
            if self.mode == "bar":
                self.bar = tqdm(total=self.epochs, initial=self.start, unit=self.unit, desc="train", file=self.err,
                                dynamic_ncols=True)
        if self.bar is not None:
            self.bar.set_postfix_str(describe(r), refresh=False)
            self.bar.update(at - self.bar.n)
        elif self.mode == "lines":
            done = at - self.start
            eta = self.trained_s / done * (self.epochs - at) if done > 0 else 0.0
            print(f"{self.unit} {at}/{self.epochs}  {describe(r)}  eta {eta_text(eta)}", file=self.err, flush=True)

    def close(self) -> None:
        with self.lock:
            if self.bar is not None:
                self.bar.close()
