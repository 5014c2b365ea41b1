"""Run directories: train a config into one, resume one exactly, load one back to sample from.

A run directory holds `config.json` (every setting, written atomically before training, with the
corpus' sha1 and the library versions), `metrics.jsonl` (one JSON object per epoch, or per evaluation
of a run by steps), `checkpoints/` (orbax, numbered by epoch or step, every `save_every` and at the end),
and at each checkpoint a redrawn `curves.png`, a
line of `samples.txt` and, if asked, TensorBoard events in `tb/` (artifacts.py). SIGINT and SIGTERM
stop a run at its next checkpoint (the end of the current chunk of epochs, or of `save_every` steps); so
does a `time_budget`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax

from jaxrnn import checkpoint, interrupts, rundir, training
from jaxrnn.artifacts import summary_writer
from jaxrnn.config import Config, source_of
from jaxrnn.data import Corpus, Vocab, file_tokens, load_corpus, part_spans, preprocess
from jaxrnn.errors import CheckpointError, ConfigError, Damaged, DataError, JaxrnnError, RunMismatch, Stopped
from jaxrnn.execution import resolve
from jaxrnn.models import LanguageModel, build_model
from jaxrnn.parallel import barrier, is_primary, largest_across, local_copy
from jaxrnn.progress import Progress
from jaxrnn.sample import GREEDY, Sampling, samples
from jaxrnn.steps import TrainState, init_state
from jaxrnn.training import NonFiniteLoss, check_trainable, evaluate_tokens, make_optimizer
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

    def __post_init__(self) -> None:
        b = self.time_budget
        if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b < float("inf")):
            raise ConfigError(f"--time-budget must be a positive number of seconds, got {b!r}; pass e.g. 600")

    def check(self, cfg: Config) -> None:
        """Refuse options the config's run cannot take."""
        if self.per_step and cfg.steps is not None:
            raise ConfigError("--per-step is the chapters' loop over epochs, one call a batch; drop it to train by "
                              "--steps (rounds of --eval-every steps, one compiled call each)")


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


def _fit_into(writer: Writer | None, cfg: Config, corpus: Corpus, model: LanguageModel, state: TrainState | None,
              start: int, history: list[dict[str, Any]], options: RunOptions) -> Trained:
    """The run loop: train from `start` (in `cfg.unit`), chunk by chunk (`training.fit_chunks`), appending
    metrics as records come, showing progress as `options` says, and saving a checkpoint where one is due.
    A signal, or the options' time budget passed, ends the loop at its next checkpoint; a signal during a
    compilation with nothing trained since the last checkpoint ends it at once."""
    unit, began = cfg.unit, time.monotonic()
    run_dir = writer.run_dir if writer is not None else None
    last_saved = {unit: start if state is not None else None}
    new: list[dict[str, Any]] = []
    nothing = contextlib.nullcontext()
    progress, time_budget = options.progress, options.time_budget
    shown = Progress.of(cfg, "auto" if is_primary() else "quiet") if progress is True else None
    on_epoch = shown or progress or None
    watched = on_epoch if isinstance(on_epoch, Progress) else None
    done = start

    def kept(before: str = "") -> str:  # what a run that fails keeps
        at = last_saved[unit]
        return f"the checkpoint at {unit} {at} is kept" if at is not None else f"no checkpoint was saved{before}"

    def sample_text(params: Any) -> str:  # what samples.txt shows at a checkpoint
        with jax.default_matmul_precision(cfg.precision):
            return samples(model, local_copy(params), corpus.vocab, corpus.prompt, SAMPLE_CHARS, 1)[0]

    trained = training.fit_chunks(cfg, corpus, model, state, start, options.per_step,
                                  on_phase=watched.phase if watched else None)
    if writer is not None:
        writer.begin(cfg.curves, cfg.tensorboard)
    with (interrupts.deferred() as caught, contextlib.closing(shown) if shown else nothing,
          watched.watching(start) if watched else nothing, contextlib.closing(trained)):
        try:
            for chunk in trained:
                state, done = chunk.state, chunk.records[-1][unit]
                new += chunk.records
                for r in chunk.records:
                    if on_epoch is not None:
                        on_epoch(r)
                if writer is not None:
                    writer.append(chunk.records)
                caught.unsaved = not chunk.save
                if not chunk.save:
                    continue
                if writer is not None:
                    meta = checkpoint.Meta.of(cfg, corpus.vocab, corpus.prompt, chunk.records[-1])
                    writer.checkpoint(done, state, meta)  # every process: each writes the shards it holds
                    last_saved[unit] = done
                    writer.show(history + new, chunk.records, functools.partial(interrupts.wait, sample_text,
                                                                                state.params))
                if done >= cfg.length:  # complete: it prints its result, whatever signal came
                    break
                signum = largest_across(caught.signum)  # a signal to any process stops them all after this chunk
                if signum:
                    raise Stopped(signum, done, run_dir, unit)
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
                              "--batch-size, --window, --hidden or --layers") from None
        except NonFiniteLoss as e:
            skips = cfg.skip_nonfinite or e.loss is not None  # a finite loss is not skipped
            advice = "lower --lr or --clip" + ("" if skips else ", or pass --skip-nonfinite to skip such steps")
            raise JaxrnnError(f"{e} ({kept(' before it')}); {advice}") from None
    return Trained(cfg, corpus.vocab, model, local_copy(state), history + new, run_dir, done, corpus=corpus)


def train(cfg: Config, out: str | Path | None = None, corpus: Corpus | None = None, per_step: bool = False,
          force: bool = False, progress: bool | OnEpoch = True, time_budget: float | None = None) -> Trained:
    """Train `cfg` from scratch; with `out`, write the run directory (config, metrics, checkpoints).
    Progress shows on stderr as in the CLI (`progress=False`: none; a callable gets each record).
    `time_budget` seconds stop the run at the first checkpoint past them (`resume` goes on). A relative
    `cfg.data` is made absolute, so the run resumes from any working directory. Everything that can
    refuse the run is checked before the run directory is made."""
    options = RunOptions(per_step, progress, time_budget)
    options.check(cfg)
    loop = resolve(cfg)
    if source_of(cfg.data) is None:
        cfg = cfg.replace(data=str(Path(cfg.data).absolute()))  # its reading stays
    if corpus is None:
        corpus = corpus_for(cfg)
    else:
        check_corpus(cfg, corpus)
    model = build_model(cfg, len(corpus.vocab), loop)
    check_trainable(cfg, corpus, model)
    if cfg.tensorboard and out is not None:
        summary_writer()
    run_dir = Path(out) if out is not None else None
    if interrupts.pending():  # Ctrl-C while the corpus was read: no run directory for a run that never starts
        raise Stopped(interrupts.pending(), None)
    with Writer(run_dir) if run_dir is not None else contextlib.nullcontext() as writer:
        if writer is not None:
            writer.start(cfg, force, corpus.sha1)
        return _fit_into(writer, cfg, corpus, model, None, 0, [], options)


def _restore(run_dir: Path, epoch: int, cfg: Config | None = None, vocab: Vocab | None = None) -> Trained:
    # `epoch` is the checkpoint's number: an epoch, or a step of a run by steps
    """Restore one checkpoint (no metrics), checking it against the run's config and the corpus' vocab if given."""
    meta = checkpoint.restore_meta(run_dir, epoch)
    saved_cfg = Config.from_dict(meta.config)
    saved_vocab = Vocab(meta.vocab)
    if cfg is not None and saved_cfg != cfg:
        diff = sorted(k for k, v in cfg.to_dict().items() if meta.config.get(k) != v)
        raise RunMismatch(f"checkpoint {epoch} in {run_dir} was written by another run (config differs in "
                              f"{diff}); restore the run's own config.json or start a new run with --out")
    if vocab is not None and saved_vocab.idx_to_token != vocab.idx_to_token:
        raise RunMismatch(f"checkpoint {epoch} in {run_dir} has another vocab than the corpus gives; "
                              "resume with the corpus the run was trained on")
    model = build_model(saved_cfg, len(saved_vocab))
    abstract = jax.eval_shape(lambda: init_state(model, make_optimizer(saved_cfg), saved_cfg.seed))
    state = checkpoint.restore_state(run_dir, epoch, abstract, meta.digest)
    val_ppl = None if meta.val_ppl is None else float(meta.val_ppl)
    return Trained(saved_cfg, saved_vocab, model, state, [], run_dir, epoch, val_ppl, saved_prompt=meta.prompt)


def resume(run_dir: str | Path, per_step: bool = False, progress: bool | OnEpoch = True,
           time_budget: float | None = None) -> Trained:
    """Continue a run from its latest complete checkpoint with its saved config, ending with the same
    parameters as the run left alone; a run with no checkpoint restarts from the start. The run
    directory is held for this process while it resumes (a second writer is refused)."""
    run_dir = Path(run_dir)
    if not (run_dir / rundir.CONFIG).is_file():
        what = (f"holds no {rundir.CONFIG}" if run_dir.is_dir() else "is a file, not a run directory"
                if run_dir.exists() else "does not exist")
        raise JaxrnnError(f"{run_dir} {what}; pass --resume with a run directory written by 'jaxrnn train'")
    options = RunOptions(per_step, progress, time_budget)
    with Writer(run_dir) as writer:
        return _resume(writer, options)


def _resume(writer: Writer, options: RunOptions) -> Trained:
    run_dir = writer.run_dir
    cfg = Config.load(run_dir / rundir.CONFIG)
    options.check(cfg)
    if source_of(cfg.data) is None and not Path(cfg.data).is_file():
        sha1 = rundir.saved_sha1(run_dir)
        raise DataError(f"{cfg.data}, the corpus {run_dir} trains on, is gone; put the file back at that path"
                        + (f" (sha1 {sha1})" if sha1 else "") + ": --resume reads the run's own corpus")
    corpus = corpus_for(cfg)
    sha1 = rundir.saved_sha1(run_dir)
    if sha1 not in (None, corpus.sha1):
        raise RunMismatch(f"the corpus {corpus.path} has changed since {run_dir} started (sha1 {corpus.sha1}, "
                          f"not {sha1}); restore the file the run trained on, or start a new run with --out")
    model, state, start, val_ppl = build_model(cfg, len(corpus.vocab)), None, 0, None
    for epoch in reversed(checkpoint.steps(run_dir)):
        failed = None
        try:
            restored = _restore(run_dir, epoch, cfg, corpus.vocab)
            model, state, val_ppl = restored.model, restored.state, restored.saved_val_ppl
        except RunMismatch:  # the same files in every process: each raises it
            raise
        except CheckpointError as e:
            failed = e
        if largest_across(failed is not None):  # every process goes on from the same checkpoint
            writer.set_aside(epoch, failed)
            state, val_ppl = None, None
            continue
        start = epoch
        break
    for epoch in [e for e in checkpoint.steps(run_dir) if e < start]:
        try:  # the next save's manager reads every checkpoint's metrics record
            checkpoint.saved_val_ppl(run_dir, epoch)
        except Damaged as e:
            writer.set_aside(epoch, e, "keeping the others")
    history = rundir.read_metrics(run_dir, upto=start)
    barrier("metrics read")
    writer.rewrite(history)
    if state is not None and start >= cfg.length:
        log(f"jaxrnn: {run_dir} finished all {cfg.length} {cfg.unit}s already")
        return Trained(cfg, corpus.vocab, model, state, history, run_dir, start, val_ppl, corpus)
    log(f"jaxrnn: resuming {run_dir} at {cfg.unit} {start}")
    return _fit_into(writer, cfg, corpus, model, state, start, history, options)


def corpus_for(cfg: Config) -> Corpus:
    """The corpus a config trains on: its file (or The Time Machine), preprocessing and split."""
    return load_corpus(cfg.data, cfg.num_steps, cfg.num_train, cfg.num_val, cfg.preprocessing, cfg.split)


def check_corpus(cfg: Config, corpus: Corpus) -> None:
    """Refuse a corpus read from another file than `cfg.data`, or preprocessed, windowed or split otherwise
    than `cfg` says: the run directory records `cfg`, and a resumed run reads the corpus as `cfg` says."""
    source = source_of(cfg.data)
    if source is not None:
        named, same_file = f"{cfg.data or 'timemachine'} (sha1 {source.sha1})", corpus.sha1 == source.sha1
    else:
        named = str(Path(cfg.data).resolve())
        same_file = str(corpus.path.resolve()) == named
    if not same_file:
        raise ConfigError(f"the corpus was read from {corpus.path}, but the config names {named}; "
                          "pass corpus=jaxrnn.corpus_for(cfg), or set Config(data=...) to the corpus' file")
    if corpus.preprocessing != cfg.preprocessing:
        raise ConfigError(f"the corpus was read with --preprocessing {corpus.preprocessing}, but the config asks "
                          f"for {cfg.preprocessing}; pass corpus=jaxrnn.corpus_for(cfg)")
    spans = part_spans(len(corpus.tokens), cfg.num_steps, cfg.num_train, cfg.num_val, cfg.split)

    def parts(num_steps: int, spans: dict[str, tuple[int, int]]) -> str:
        return f"{num_steps + 1}-character windows, " + ", ".join(f"{n} {p}" for p, (_, n) in spans.items() if n)

    if corpus.num_steps != cfg.num_steps or corpus.spans != spans:
        raise ConfigError(f"the corpus has {parts(corpus.num_steps, corpus.spans)}, but the config asks for "
                          f"{parts(cfg.num_steps, spans)}; pass corpus=jaxrnn.corpus_for(cfg)")


def evaluate(trained: Trained, path: str | Path | None = None, part: str = "val") -> float:
    """Mean cross-entropy (nats per character) of a trained model on a file (preprocessed as the run's
    corpus, the model's vocab; unknown characters read as <unk>), or, without a file, on a part of the
    run's own corpus ('val' or 'test'); read as the run reads its validation part (`eval_protocol`)."""
    cfg = trained.cfg
    if path is None:
        corpus = trained.corpus or corpus_for(cfg)
        if not corpus.spans[part][1]:
            raise JaxrnnError(f"this run's corpus has no {part} part; train with --split TRAIN,VAL,TEST to have one, "
                              "or pass --data FILE")
        tokens = corpus.part_tokens(part)
    else:
        tokens = file_tokens(Path(path), trained.vocab, cfg.num_steps, cfg.preprocessing)
    return evaluate_tokens(cfg, trained.model, trained.params, tokens)


def load(run_dir: str | Path, step: int | str | None = None) -> Trained:
    """Restore a run's checkpoint (the latest, 'best', or an epoch) in any process, on this machine's
    devices, with no other input. A checkpoint that cannot be read whole raises Damaged, whose advice
    names the latest other checkpoint that does: never another checkpoint's model in its place."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file, not a run directory" if run_dir.exists() else "does not exist"
        raise JaxrnnError(f"{run_dir} {what}; pass --run with a directory written by 'jaxrnn train'")
    epoch = checkpoint.resolve(run_dir, step)
    try:
        trained = _restore(run_dir, epoch)
    except Damaged as e:
        raise Damaged(epoch, run_dir, e.what, _past_damage(run_dir, epoch)) from None
    return dataclasses.replace(trained, history=rundir.read_metrics(run_dir, upto=epoch))


def _past_damage(run_dir: Path, damaged: int) -> str:
    """What to do about a damaged checkpoint: the latest other one that restores, or a resume, which sets
    damaged checkpoints aside."""
    for other in reversed(checkpoint.steps(run_dir)):
        if other != damaged:
            with contextlib.suppress(CheckpointError):
                _restore(run_dir, other)
                return f"pass --step {other}, the latest checkpoint that loads"
    return (f"no checkpoint of {run_dir} loads; 'jaxrnn train --resume {run_dir}' sets them aside and trains "
            "again from the start")
