"""Run directories: train a config into one, resume one exactly, load one back to sample from.

A run directory holds `config.json` (every setting, written atomically before training, with the
corpus' sha1 and the library versions), `metrics.jsonl` (one JSON object per epoch, or per evaluation
of a run by steps), `checkpoints/` (orbax, numbered by epoch or step, every `save_every` and at the end),
and at each checkpoint a redrawn `curves.png`, a
line of `samples.txt` and, if asked, TensorBoard events in `tb/` (artifacts.py). SIGINT and SIGTERM
stop a run at its next checkpoint (the end of the current chunk of epochs, or of `save_every` steps); so
does a `time_budget` (the loop itself: loop.py). A group's directory (`--seeds`) holds `group.json` and a
run directory per replica, `seed-K/`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrnn import checkpoint, interrupts, rundir
from jaxrnn.artifacts import summary_writer
from jaxrnn.config import Config, source_of
from jaxrnn.data import Corpus, Vocab, file_tokens, load_corpus, part_spans
from jaxrnn.errors import CheckpointError, ConfigError, Damaged, DataError, JaxrnnError, RunMismatch, Stopped
from jaxrnn.execution import resolve
from jaxrnn.loop import Member, OnEpoch, RunOptions, Trained, fit_into, log
from jaxrnn.models import LanguageModel, build_model
from jaxrnn.parallel import barrier, largest_across, on_primary
from jaxrnn.replicas import one_program
from jaxrnn.spread import Spread, median_index
from jaxrnn.steps import TrainState, init_state
from jaxrnn.training import bits, check_trainable, evaluate_tokens, make_optimizer
from jaxrnn.writer import Writer


def seed_list(cfg: Config, seeds: int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """The seeds of a group: a count N (the config's seed and the N - 1 after it) or the seeds themselves."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ConfigError(f"--seeds {seeds} trains no replica; pass a count of 1 or more, or seeds such as 0,3,7")
        return tuple(range(cfg.seed, cfg.seed + seeds))
    seeds = tuple(seeds) if isinstance(seeds, (tuple, list)) else ()
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"--seeds takes a count or seeds that are whole numbers >= 0, got {seeds!r}; pass e.g. "
                          "--seeds 8 or --seeds 0,3,7")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"--seeds names seed {repeated[0]} twice; each replica trains with a seed of its own")
    return seeds


def train(cfg: Config, out: str | Path | None = None, corpus: Corpus | None = None, per_step: bool = False,
          force: bool = False, progress: bool | OnEpoch = True, time_budget: float | None = None,
          seeds: int | tuple[int, ...] | None = None) -> Trained | Group:
    """Train `cfg` from scratch; with `out`, write the run directory (config, metrics, checkpoints).
    Progress shows on stderr as in the CLI (`progress=False`: none; a callable gets each record).
    `time_budget` seconds stop the run at the first checkpoint past them (`resume` goes on). A relative
    `cfg.data` is made absolute, so the run resumes from any working directory. Everything that can
    refuse the run is checked before the run directory is made. With `seeds` (a count, or the seeds), replicas
    of `cfg` that differ only by their seed train as one program and a `Group` of them is returned; `out`
    then holds group.json and each replica's run directory `seed-K/`."""
    if seeds is not None:
        return train_groups([cfg], [out], seeds, corpus, per_step, force, progress, time_budget)[0]
    options = RunOptions(per_step, progress, time_budget)
    options.check(cfg)
    cfg, corpus, model = _ready(cfg, corpus, 1, out)
    run_dir = Path(out) if out is not None else None
    with Writer(run_dir) if run_dir is not None else contextlib.nullcontext() as writer:
        if writer is not None:
            writer.start(cfg, force, corpus.sha1)
        return fit_into([Member(cfg, writer)], corpus, model, None, 0, options)[0]


def _ready(cfg: Config, corpus: Corpus | None, replicas: int, out: str | Path | None
           ) -> tuple[Config, Corpus, LanguageModel]:
    """A new run's config (its corpus' path made absolute), corpus and model, everything that can refuse the
    run checked (for `replicas` trained as one program) before anything is written."""
    loop = resolve(cfg)
    if source_of(cfg.data) is None:
        cfg = cfg.replace(data=str(Path(cfg.data).absolute()))  # its reading stays
    if corpus is None:
        corpus = corpus_for(cfg)
    else:
        check_corpus(cfg, corpus)
    model = build_model(cfg, len(corpus.vocab), loop)
    check_trainable(cfg, corpus, model, replicas)
    if cfg.tensorboard and out is not None:
        summary_writer()
    if interrupts.pending():  # Ctrl-C while the corpus was read: no run directory for a run that never starts
        raise Stopped(interrupts.pending(), None)
    return cfg, corpus, model


def train_groups(points: list[Config], outs: list[str | Path | None], seeds: int | tuple[int, ...],
                 corpus: Corpus | None = None, per_step: bool = False, force: bool = False,
                 progress: bool | OnEpoch = True, time_budget: float | None = None) -> list[Group]:
    """A group of `seeds` for each of `points` (configs that differ only by SHARED settings:
    `replicas.program_of`), every replica of every group trained as one program, each group into its
    directory of `outs` (None: nothing written) as `train(point, out, seeds=seeds)` writes it. A sweep's
    points that share a program train so (`sweep.run_sweep`)."""
    options = RunOptions(per_step, progress, time_budget)
    seeds = seed_list(points[0], seeds)
    options.check(points[0], group=True)
    one_program(points, "the points")
    base, corpus, model = _ready(points[0], corpus, len(points) * len(seeds), outs[0])
    with contextlib.ExitStack() as held:
        members = []
        for point, out in zip(points, outs):
            cfgs = [point.replace(data=base.data, seed=s) for s in seeds]
            writers: list[Writer | None] = [None] * len(seeds)
            if out is not None:
                on_primary(functools.partial(rundir.write_group, Path(out), seeds, force))
                writers = [held.enter_context(Writer(rundir.replica_dir(Path(out), s))) for s in seeds]
                for w, c in zip(writers, cfgs):
                    w.start(c, force, corpus.sha1)
            members += [Member(c, w) for c, w in zip(cfgs, writers)]
        trained = fit_into(members, corpus, model, None, 0, options, group=True)
    return _groups(trained, [len(seeds)] * len(points), outs)


def _groups(trained: list[Trained], sizes: list[int], dirs: list[Any]) -> list[Group]:
    """The members of one program cut back into their groups (`sizes` of them each, in order)."""
    ends = np.cumsum([0, *sizes])
    return [Group(trained[a:b], None if d is None else Path(d)) for a, b, d in zip(ends[:-1], ends[1:], dirs)]


@dataclass
class Group:
    """Replicas of one config that differ only by their seed (init, data order, dropout masks), trained as one
    program (with other groups, in a sweep: `train_groups`): what `train(cfg, seeds=...)` and the resume of a
    group return. Each replica is a `Trained`, in
    seed order; `run_dir` holds group.json and each replica's run directory `seed-K/`."""

    replicas: list[Trained]
    run_dir: Path | None = None

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(t.cfg.seed for t in self.replicas)

    @property
    def median(self) -> Trained:
        """The replica whose final validation perplexity is the median (the lower middle one of an even count)."""
        return self.replicas[median_index([t.val_ppl for t in self.replicas])]

    def summary(self) -> dict[str, Any]:
        """The spread over the replicas of the final validation perplexity, loss (nats) and bits per character
        (each `spread.Spread`: n, mean, std, and the 95% interval of the mean), and the median's seed."""
        losses = [math.log(t.val_ppl) for t in self.replicas]
        return {"seeds": list(self.seeds), "val_ppl": Spread.of([t.val_ppl for t in self.replicas]).to_dict(),
                "val_loss": Spread.of(losses).to_dict(), "val_bpc": Spread.of([bits(x) for x in losses]).to_dict(),
                "median_seed": self.median.cfg.seed}


def _resume_groups(group_dirs: list[Path], options: RunOptions) -> list[Group]:
    """Resume every replica of the groups (one group's, or a sweep's groups that share a program) from the
    group's latest checkpoint, the latest that any replica restores: a replica behind it (a stop between
    the replicas' saves, or its checkpoint damaged and set aside) first catches up from its own latest
    (`_catch_up`, bit for bit as in the group), then all go on as one program."""
    with contextlib.ExitStack() as held:
        seeds = [rundir.read_group(g) for g in group_dirs]
        for g, ss in zip(group_dirs, seeds):
            if ss is None:
                raise JaxrnnError(f"{g} holds no {rundir.GROUP}; pass the directories of groups that 'jaxrnn train "
                                  "--seeds' or 'jaxrnn sweep' wrote")
        dirs = [rundir.replica_dir(g, s) for g, ss in zip(group_dirs, seeds) for s in ss]
        missing = [d for d in dirs if not (d / rundir.CONFIG).is_file()]
        if missing:
            raise JaxrnnError(f"{missing[0].parent} names replica {missing[0].name} but it holds no {rundir.CONFIG}; "
                              "restore it, or train the group anew with --force")
        writers = [held.enter_context(Writer(d)) for d in dirs]
        cfgs = [Config.load(d / rundir.CONFIG) for d in dirs]
        at = 0
        for ss in seeds:  # within a group the replicas differ only by their seed
            base = cfgs[at].replace(seed=ss[0])
            for s, c, d in zip(ss, cfgs[at:at + len(ss)], dirs[at:at + len(ss)]):
                if c != base.replace(seed=s):
                    diff = sorted(k for k, v in c.to_dict().items() if k != "seed" and base.to_dict()[k] != v)
                    raise RunMismatch(f"{d} is not a replica of {dirs[at]} (its config differs in {diff or ['seed']}); "
                                      "restore its config.json, or train the group anew with --force")
            at += len(ss)
        one_program(cfgs, "the groups' configs")
        base = cfgs[0]
        options.check(base, group=True)
        corpus = _own_corpus(dirs[0], base)
        model = build_model(base, len(corpus.vocab))
        latest = [_latest(w, c, corpus) for w, c in zip(writers, cfgs)]  # each one's latest that restores
        common = max(start for _, start, _ in latest)  # the group's: the others catch up to it
        histories = [_history_upto(w, start) for w, (_, start, _) in zip(writers, latest)]
        members = [Member(c, w, h) for c, w, h in zip(cfgs, writers, histories)]
        began = time.monotonic()
        latest = _catch_up(members, latest, common, corpus, model, options)
        if options.time_budget is not None:  # the catch-up's time is the budget's too
            options = dataclasses.replace(options, time_budget=max(options.time_budget - (time.monotonic() - began),
                                                                   1e-9))
        names = ", ".join(map(str, group_dirs))
        sizes = [len(ss) for ss in seeds]
        if common and common >= base.length:
            log(f"jaxrnn: {names} finished all {base.length} {base.unit}s already")
            trained = [Trained(m.cfg, corpus.vocab, model, st, m.history, m.writer.run_dir, common, val, corpus)
                       for m, (st, _, val) in zip(members, latest)]
            return _groups(trained, sizes, group_dirs)
        state = jax.tree.map(lambda *xs: np.stack(xs), *[st for st, _, _ in latest]) if common else None
        log(f"jaxrnn: resuming {names} ({' + '.join(map(str, sizes))} seeds) at {base.unit} {common}")
        return _groups(fit_into(members, corpus, model, state, common, options, group=True), sizes, group_dirs)


def _catch_up(members: list[Member], latest: list[tuple[TrainState | None, int, float | None]], common: int,
              corpus: Corpus, model: LanguageModel, options: RunOptions) -> list[tuple[TrainState | None, int, Any]]:
    """Replicas behind the group's checkpoint `common` train from their own latest one up to it, those from one
    checkpoint as a program of their own laid out as the whole group is (so each trains bit for bit as it would
    have in the group), while the others keep theirs; then every replica is at `common` (each one's state,
    number and val ppl, as `latest` holds them). Each one's restart is said on stderr."""
    unit = members[0].cfg.unit
    for start in sorted({start for _, start, _ in latest if start < common}):
        ks = [k for k, (_, at, _) in enumerate(latest) if at == start]
        for k in ks:
            log(f"jaxrnn: replica {members[k].writer.run_dir} restarts from " + (f"{unit} {start}, its latest "
                "checkpoint that restores" if start else "the start: none of its checkpoints restores") +
                f"; the others keep {unit} {common}")
        state = jax.tree.map(lambda *xs: np.stack(xs), *[latest[k][0] for k in ks]) if start else None
        caught_up = fit_into([members[k] for k in ks], corpus, model, state, start,
                             dataclasses.replace(options, until=common, time_budget=None, like=len(members)),
                             group=True)
        for k, t in zip(ks, caught_up):
            latest[k] = (t.state, common, t.val_ppl)
            members[k].history, members[k].new = members[k].history + members[k].new, []
    return latest


def resume_groups(group_dirs: list[str | Path], per_step: bool = False, progress: bool | OnEpoch = True,
                  time_budget: float | None = None) -> list[Group]:
    """Resume groups that `train_groups` trained as one program, as one program again (as `resume` does one)."""
    return _resume_groups([Path(g) for g in group_dirs], RunOptions(per_step, progress, time_budget))


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
           time_budget: float | None = None) -> Trained | Group:
    """Continue a run from its latest complete checkpoint with its saved config, ending with the same
    parameters as the run left alone; a run with no checkpoint restarts from the start; a group's
    directory resumes the whole group. The run directory is held for this process while it resumes (a
    second writer is refused)."""
    run_dir = Path(run_dir)
    options = RunOptions(per_step, progress, time_budget)
    if rundir.read_group(run_dir) is not None:
        return _resume_groups([run_dir], options)[0]
    if not (run_dir / rundir.CONFIG).is_file():
        what = (f"holds no {rundir.CONFIG}" if run_dir.is_dir() else "is a file, not a run directory"
                if run_dir.exists() else "does not exist")
        raise JaxrnnError(f"{run_dir} {what}; pass --resume with a run directory written by 'jaxrnn train'")
    with Writer(run_dir) as writer:
        return _resume(writer, options)


def _resume(writer: Writer, options: RunOptions) -> Trained:
    run_dir = writer.run_dir
    cfg = Config.load(run_dir / rundir.CONFIG)
    options.check(cfg)
    corpus = _own_corpus(run_dir, cfg)
    model = build_model(cfg, len(corpus.vocab))
    state, start, val_ppl = _latest(writer, cfg, corpus)
    history = _history_upto(writer, start)
    if state is not None and start >= cfg.length:
        log(f"jaxrnn: {run_dir} finished all {cfg.length} {cfg.unit}s already")
        return Trained(cfg, corpus.vocab, model, state, history, run_dir, start, val_ppl, corpus)
    log(f"jaxrnn: resuming {run_dir} at {cfg.unit} {start}")
    return fit_into([Member(cfg, writer, history)], corpus, model, state, start, options)[0]


def _own_corpus(run_dir: Path, cfg: Config) -> Corpus:
    """The corpus a run being resumed trained on, refused if it is gone or has changed since."""
    if source_of(cfg.data) is None and not Path(cfg.data).is_file():
        sha1 = rundir.saved_sha1(run_dir)
        raise DataError(f"{cfg.data}, the corpus {run_dir} trains on, is gone; put the file back at that path"
                        + (f" (sha1 {sha1})" if sha1 else "") + ": --resume reads the run's own corpus")
    corpus = corpus_for(cfg)
    sha1 = rundir.saved_sha1(run_dir)
    if sha1 not in (None, corpus.sha1):
        raise RunMismatch(f"the corpus {corpus.path} has changed since {run_dir} started (sha1 {corpus.sha1}, "
                          f"not {sha1}); restore the file the run trained on, or start a new run with --out")
    return corpus


def _latest(writer: Writer, cfg: Config, corpus: Corpus, upto: int | None = None
            ) -> tuple[TrainState | None, int, float | None]:
    """The run's latest checkpoint that restores (numbered at most `upto`, if given), as (state, its
    number, its val ppl), or (None, 0, None) for none; damaged ones on the way are set aside."""
    run_dir, state, start, val_ppl = writer.run_dir, None, 0, None
    for epoch in reversed([e for e in checkpoint.steps(run_dir) if upto is None or e <= upto]):
        failed = None
        try:
            restored = _restore(run_dir, epoch, cfg, corpus.vocab)
            state, val_ppl = restored.state, restored.saved_val_ppl
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
    return state, start, val_ppl


def _history_upto(writer: Writer, start: int) -> list[dict[str, Any]]:
    """The run's records up to its checkpoint `start`, metrics.jsonl cut back to them."""
    history = rundir.read_metrics(writer.run_dir, upto=start)
    barrier("metrics read")
    writer.rewrite(history)
    return history


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
