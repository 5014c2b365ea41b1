"""The run loop and what it returns: `fit_into` trains a solo run or a group's replicas chunk by chunk
(`training.fit_chunks`), writing each one's metrics, checkpoints and artifacts and showing progress, and
stops on a signal or the time budget by leaving the loop; `Trained` is a trained model with its params,
vocab and history; `RunOptions` how a run is carried out.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax

from jaxrnn import checkpoint, interrupts, rundir, training
from jaxrnn.config import Config
from jaxrnn.data import Corpus, Vocab, preprocess
from jaxrnn.errors import ConfigError, JaxrnnError, Stopped
from jaxrnn.models import LanguageModel
from jaxrnn.parallel import is_primary, largest_across, local_copy
from jaxrnn.progress import Progress
from jaxrnn.sample import GREEDY, Sampling, samples
from jaxrnn.spread import mean_record
from jaxrnn.steps import TrainState
from jaxrnn.training import NonFiniteLoss
from jaxrnn.writer import Writer

SAMPLE_CHARS = 50  # characters in each samples.txt line, as the CLI's final line
OnEpoch = Callable[[dict[str, Any]], None]  # called with each record (an epoch's, or an evaluation's) as they come


@dataclass(frozen=True)
class RunOptions:
    """How a run is carried out, not what it trains (so not in config.json, and free to change on resume):
    checked on construction, and against a config by `check`."""

    per_step: bool = False  # the chapters' Python loop, one jitted step a batch, instead of fused chunks
    progress: bool | OnEpoch = True  # on stderr as the CLI shows it (process 0), nothing, or each record to this
    time_budget: float | None = None  # seconds: stop at the first checkpoint past them (resume goes on)
    until: int | None = None  # a checkpoint's number to stop at short of the end (a replica catching up)
    like: int | None = None  # lay the replicas out as a group of this many is (a catch-up, bit for bit as its group)

    def __post_init__(self) -> None:
        b = self.time_budget
        if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b < float("inf")):
            raise ConfigError(f"--time-budget must be a positive number of seconds, got {b!r}; pass e.g. 600")

    def check(self, cfg: Config, group: bool = False) -> None:
        """Refuse options the config's run (a `group` of replicas, or a solo run) cannot take."""
        if self.per_step and cfg.steps is not None:
            raise ConfigError("--per-step is the chapters' loop over epochs, one call a batch; drop it to train by "
                              "--steps (rounds of --eval-every steps, one compiled call each)")
        if self.per_step and group:
            raise ConfigError("--per-step is the chapters' loop, one call a batch, and --seeds trains the replicas as "
                              "one compiled program; drop one of them")
        if group and jax.process_count() > 1:
            raise ConfigError("a group of seeds trains in one process so far; train it without --distributed")


@dataclass
class Trained:
    """A model with its params and vocab: what `train` and `resume` return and `load` restores."""

    cfg: Config
    vocab: Vocab
    model: LanguageModel
    state: TrainState
    history: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None
    done: int = 0  # epochs trained, or optimizer steps for a run by steps (cfg.unit)
    saved_val_ppl: float | None = None  # from the checkpoint, for a run whose metrics.jsonl is gone
    corpus: Corpus | None = field(default=None, repr=False)  # what train/resume read, so evaluate need not again
    saved_prompt: str | None = None  # from the checkpoint: the corpus' default prompt

    @property
    def params(self):
        return self.state.params

    @property
    def prompt(self) -> str:
        """The default prompt: 'time traveller' for The Time Machine, else the opening words of the corpus."""
        if self.corpus is not None:
            return self.corpus.prompt
        return self.saved_prompt or self.vocab.prompt()

    @property
    def val_ppl(self) -> float:
        """The validation perplexity after the last epoch (or evaluation) trained."""
        if self.history and self.history[-1][self.cfg.unit] == self.done:
            return self.history[-1]["val_ppl"]
        if self.saved_val_ppl is None:
            raise JaxrnnError("this run has no validation perplexity recorded; run 'jaxrnn eval --run RUN_DIR'")
        return self.saved_val_ppl

    def predict(self, prefix: str, num_preds: int = 50, temperature: float = 0.0, seed: int = 0, top_k: int = 0,
                top_p: float = 1.0) -> str:
        """d2l's predict: `prefix` plus `num_preds` characters, greedy unless a temperature is given
        (then also restricted to the `top_k` most likely tokens and the `top_p` nucleus, if given)."""
        return self.samples(prefix, num_preds, 1, Sampling(temperature, top_k, top_p, seed))[0]

    def samples(self, prefix: str, num_preds: int = 50, num_samples: int = 1, how: Sampling = GREEDY) -> list[str]:
        """`num_samples` continuations of `prefix`, drawn as one batch, `how` says (greedy by default). The
        prefix is preprocessed as the run's corpus was (d2l's: lower case, non-letters to spaces), with a
        note on stderr if that changes it."""
        read = preprocess(prefix, self.cfg.preprocessing)
        if read != prefix:
            log(f"jaxrnn: note: the prompt reads {read!r} after --preprocessing {self.cfg.preprocessing}, as the "
                "run's corpus was read")
        with jax.default_matmul_precision(self.cfg.precision):
            return samples(self.model, self.params, self.vocab, read, num_preds, num_samples, how)

    def save(self, run_dir: str | Path, force: bool = False) -> Path:
        """Write this model as a run directory, as `train(cfg, out=run_dir)` writes one: config.json,
        metrics.jsonl, a checkpoint of its epoch, samples.txt and curves.png. `load`, `jaxrnn sample`,
        `eval`, `runs`, `plot` and `train --resume` read it back. Its own run directory is left as it is."""
        run_dir = Path(run_dir)
        if self.run_dir is not None and run_dir.resolve() == self.run_dir.resolve():
            return run_dir
        sha1 = self.corpus.sha1 if self.corpus is not None else rundir.saved_sha1(self.run_dir)
        last = self.history[-1] if self.history and self.history[-1][self.cfg.unit] == self.done else \
            {self.cfg.unit: self.done, "train_ppl": None, "val_ppl": self.val_ppl}
        with Writer(run_dir) as writer:
            writer.start(self.cfg, force, sha1)
            writer.rewrite(self.history)
            writer.checkpoint(self.done, self.state, checkpoint.Meta.of(self.cfg, self.vocab, self.prompt, last))
            writer.show(self.history, [last], lambda: self.predict(self.prompt, SAMPLE_CHARS),
                        curves=self.cfg.curves and bool(self.history))
        return run_dir


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Member:
    """One run that the loop trains: a solo run, or one replica of a group. Its config (with its own seed),
    its writer (None: nothing written) and the records it had before this loop."""

    cfg: Config
    writer: Writer | None
    history: list[dict[str, Any]] = field(default_factory=list)
    new: list[dict[str, Any]] = field(default_factory=list)


def replica(state: Any, k: int) -> Any:
    """Replica `k`'s part of a group's stacked state (a pytree whose leaves lead with the replica axis)."""
    return jax.tree.map(lambda x: x[k], state)


def fit_into(members: list[Member], corpus: Corpus, model: LanguageModel, state: TrainState | None, start: int,
              options: RunOptions, group: bool = False) -> list[Trained]:
    """The run loop: train from `start` (in the unit of the members' configs), chunk by chunk
    (`training.fit_chunks`; a `group` of members, each a replica with its own seed and perhaps its own
    tuned settings, as one program), appending each member's
    metrics as records come, showing progress as `options` says (a group's as the mean over its members),
    and saving each member's checkpoint where one is due. A signal, or the options' time budget passed,
    ends the loop at its next checkpoint; a signal during a compilation with nothing trained since the
    last checkpoint ends it at once."""
    cfg = members[0].cfg
    unit, began = cfg.unit, time.monotonic()
    end = cfg.length if options.until is None else options.until
    run_dir = (members[0].writer.run_dir.parent if group else members[0].writer.run_dir) if members[0].writer else None
    last_saved = {unit: start if state is not None else None}
    nothing = contextlib.nullcontext()
    progress, time_budget = options.progress, options.time_budget
    shown = Progress.of(cfg, "auto" if is_primary() else "quiet") if progress is True else None
    on_epoch = shown or progress or None
    watched = on_epoch if isinstance(on_epoch, Progress) else None
    writers = [m.writer for m in members if m.writer is not None]
    done = start

    def kept(before: str = "") -> str:  # what a run that fails keeps
        at = last_saved[unit]
        return f"the checkpoint at {unit} {at} is kept" if at is not None else f"no checkpoint was saved{before}"

    def sample_text(params: Any) -> str:  # what samples.txt shows at a checkpoint
        with jax.default_matmul_precision(cfg.precision):
            return samples(model, local_copy(params), corpus.vocab, corpus.prompt, SAMPLE_CHARS, 1)[0]

    trained = training.fit_chunks(cfg, corpus, model, state, start, options.per_step,
                                  on_phase=watched.phase if watched else None,
                                  replicas=tuple(m.cfg for m in members) if group else None, stop=options.until,
                                  like=options.like)
    for w in writers:
        w.begin(cfg.curves, cfg.tensorboard)
    with (interrupts.deferred() as caught, contextlib.closing(shown) if shown else nothing,
          watched.watching(start) if watched else nothing, contextlib.closing(trained)):
        try:
            for chunk in trained:
                state, done = chunk.state, chunk.records[0][-1][unit]
                for m, records in zip(members, chunk.records):
                    m.new += records
                    if m.writer is not None:
                        m.writer.append(records)
                if on_epoch is not None:
                    for shown_records in zip(*chunk.records):
                        on_epoch(mean_record(list(shown_records)) if group else shown_records[0])
                caught.unsaved = not chunk.save
                if not chunk.save:
                    continue
                for k, m in enumerate(members):
                    if m.writer is None:
                        continue
                    own = replica(state, k) if group else state
                    meta = checkpoint.Meta.of(m.cfg, corpus.vocab, corpus.prompt, m.new[-1])
                    m.writer.checkpoint(done, own, meta)  # every process: each writes the shards it holds
                    m.writer.show(m.history + m.new, chunk.records[k],
                                  functools.partial(interrupts.wait, sample_text, own.params))
                if writers:
                    last_saved[unit] = done
                if done >= cfg.length:  # complete: it prints its result, whatever signal came
                    break
                signum = largest_across(caught.signum)  # a signal to any process stops them all after this chunk
                if signum:
                    raise Stopped(signum, done, run_dir, unit)
                if done >= end:  # where it was to stop (a replica caught up): the caller goes on
                    break
                if time_budget is not None and largest_across(time.monotonic() - began >= time_budget):
                    goes_on = f", its checkpoint saved; 'jaxrnn train --resume {run_dir}' goes on" if run_dir else ""
                    log(f"jaxrnn: the time budget of {time_budget:g} s is spent; stopped after {unit} {done} of "
                        f"{cfg.length}{goes_on}")
                    break
            caught.done = done >= cfg.length
        except interrupts.Interrupted as e:  # while compiling, nothing trained since the last checkpoint
            raise Stopped(e.signum, last_saved[unit], run_dir, unit, compiling=True) from None
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            raise JaxrnnError(f"out of memory while training ({str(e).splitlines()[0][:200]}; {kept()}); lower "
                              "--batch-size, --window, --hidden or --layers" + (", or --seeds" if group else "")
                              ) from None
        except NonFiniteLoss as e:
            skips = cfg.skip_nonfinite or e.loss is not None  # a finite loss is not skipped
            advice = "lower --lr or --clip" + ("" if skips else ", or pass --skip-nonfinite to skip such steps")
            raise JaxrnnError(f"{e} ({kept(' before it')}); {advice}") from None
    return [Trained(m.cfg, corpus.vocab, model, local_copy(replica(state, k) if group else state), m.history + m.new,
                    m.writer.run_dir if m.writer else None, done, corpus=corpus) for k, m in enumerate(members)]
