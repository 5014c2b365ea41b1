"""The fit loop and what it reports: the optimizer (`make_optimizer`), `fit` driving `steps.Steps` over
chunks of epochs or rounds of steps, checking the loss, timing and recording each epoch.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrnn import budget, interrupts
from jaxrnn.batching import (
    batch_slice,
    check_batching,
    check_eval,
    chunk_plan,
    eval_plan,
    eval_protocol,
    eval_sample,
    sequential_plan,
    steps_per_epoch,
)
from jaxrnn.config import Config
from jaxrnn.data import Corpus
from jaxrnn.errors import JaxrnnError
from jaxrnn.models import LanguageModel, Params
from jaxrnn.parallel import AXIS, Layout, layout, put_tree
from jaxrnn.replicas import TUNED, Replicas, init_replicas, one_program
from jaxrnn.steps import Steps, StepStats, TrainState, init_state

MAX_SKIPS = 100  # with skip_nonfinite: consecutive non-finite steps skipped before updates apply anyway


class NonFiniteLoss(JaxrnnError):
    """The training or validation loss became nan or inf, or so large that its perplexity overflows
    (`loss`, in nats); `epoch` and `step` (1-based) say where."""

    def __init__(self, epoch: int, step: int, which: str = "training", loss: float | None = None,
                 replica: str | None = None) -> None:
        self.epoch, self.step, self.which, self.loss = epoch, step, which, loss
        how = "non-finite" if loss is None else f"too large for a perplexity ({loss:.4g} nats: exp overflows)"
        of = "" if replica is None else f" of the replica with {replica}"
        super().__init__(f"the {which} loss{of} became {how} at epoch {epoch}, step {step}")


def learning_rate(cfg: Config, steps_per_epoch: int, lr: Any = None, warmup: Any = None) -> optax.Schedule:
    """The learning rate by optimizer step: `lr` (the config's, or a replica's own) throughout, or a cosine
    decay to 0 over the run's `steps` (or `epochs * steps_per_epoch`); either after `warmup` steps (the
    config's, or a replica's own) rising linearly from 0. The arithmetic is optax's linear and cosine
    schedules' joined (the same rates bit for bit), written out so that the rate and the warm-up may be a
    replica's traced values inside a program; there XLA folds fewer constants, so a replica's rates may
    differ from its solo run's by float32 rounding."""
    lr = cfg.lr if lr is None else lr
    warmup = cfg.warmup if warmup is None else warmup
    total = cfg.steps or cfg.epochs * steps_per_epoch
    decay = jnp.maximum(total - warmup, 1) if isinstance(warmup, jax.Array) else float(max(total - warmup, 1))

    def main(count: Any) -> Any:
        if cfg.schedule == "constant":
            return lr
        count = jnp.minimum(count, decay)
        return lr * (0.5 * (1 + jnp.cos(jnp.pi * count / decay)))

    def rate(count: Any) -> Any:
        if isinstance(warmup, int) and not warmup:
            return main(count)
        rising = (0.0 - lr) * (1 - jnp.clip(count, 0, warmup) / warmup) + lr
        return jnp.where(count < warmup, rising, main(count - warmup))
    return rate


def make_optimizer(cfg: Config, steps_per_epoch: int = 1, **tuned: Any) -> optax.GradientTransformation:
    """Global-norm clipping, then SGD (the chapters'), Adam or AdamW with `learning_rate(cfg, ...)`
    (`steps_per_epoch` matters to a cosine schedule only; the state's structure does not depend on it):
    clipping lives in the optimizer so every path gets it. Weight decay is L2 for SGD and Adam
    (added to the clipped gradient, as torch's `weight_decay`) and decoupled for AdamW. With
    `skip_nonfinite`, an update whose gradients are not finite is dropped (optax.apply_if_finite).
    `tuned` gives a replica's own values of TUNED settings (traced arrays inside a program) in place of the
    config's; the state's structure is the config's."""
    lr, clip, decay, warmup = (tuned.get(k, getattr(cfg, k)) for k in TUNED)
    # a plain float keeps the optimizer state of constant-rate runs (and so their checkpoints) as it
    # was before schedules existed; a schedule adds a step count to it
    rate = lr if cfg.schedule == "constant" and not cfg.warmup else learning_rate(cfg, steps_per_epoch, lr, warmup)
    if cfg.optimizer == "adamw":
        update = [optax.adamw(rate, weight_decay=decay)]
    else:
        decayed = [optax.add_decayed_weights(decay)] if cfg.weight_decay else []
        update = [*decayed, optax.sgd(rate) if cfg.optimizer == "sgd" else optax.adam(rate)]
    tx = optax.chain(optax.clip_by_global_norm(clip), *update)
    return optax.apply_if_finite(tx, max_consecutive_errors=MAX_SKIPS) if cfg.skip_nonfinite else tx


def perplexity(loss: float) -> float:
    """exp of a token-weighted mean cross-entropy (inf where it overflows, nan for a nan loss)."""
    if math.isnan(loss):
        return math.nan
    try:
        return math.exp(loss)
    except OverflowError:  # past 709.78 nats
        return math.inf


def evaluate_tokens(cfg: Config, model: LanguageModel, params: Params, tokens: np.ndarray) -> float:
    """Mean cross-entropy of `params` on a token stream, read as the run reads its validation part, on
    one device."""
    protocol = eval_protocol(cfg.eval, cfg.split)
    idx, mask = eval_plan(protocol, len(tokens) - cfg.num_steps, cfg.batch_size, cfg.num_steps)
    evaluate = _evaluator(model, cfg.num_steps, protocol == "stream", cfg.batch_size)
    with jax.default_matmul_precision(cfg.precision):
        return float(evaluate(params, *map(jnp.asarray, (tokens, idx, mask))))


@functools.lru_cache(maxsize=8)
def _evaluator(model: LanguageModel, num_steps: int, stream: bool, batch_size: int) -> Callable:
    """The jitted evaluation of a model (models compare by their fields), kept so that evaluating
    several checkpoints or files in one process traces and compiles it once per shape."""
    steps = Steps(model, optax.identity(), num_steps, stream_eval=stream)  # evaluation needs no optimizer
    return steps.jitted(layout(1, batch_size)).evaluate


def bits(loss: float) -> float:
    """Bits per character from a mean cross-entropy in nats."""
    return loss / math.log(2)


def record(where: dict[str, float], stats: StepStats, val_loss: float, seconds: float, tokens: int, protocol: str
           ) -> dict[str, Any]:
    """One line of metrics.jsonl: where the run is (`epoch` and `step`), from the per-step metrics since
    the last record (each key summed over the steps; a `NAME_sum` as its token-weighted mean `train_NAME`,
    see `steps.StepStats`) and a validation loss; losses in nats per character."""
    sums = {k: float(np.asarray(v, np.float64).sum()) for k, v in stats.items()}
    n = sums.pop("tokens")
    with np.errstate(invalid="ignore", divide="ignore"):
        trained = {f"train_{k[:-4]}" if k.endswith("_sum") else k: (v / n if n > 0 else math.nan)
                   if k.endswith("_sum") else v for k, v in sums.items()}
    train_loss = trained.pop("train_loss")
    return {
        **where,
        "train_loss": train_loss,
        "train_ppl": perplexity(train_loss),
        "val_loss": val_loss,
        "val_ppl": perplexity(val_loss),
        "val_bpc": bits(val_loss),
        "val_protocol": protocol,
        **{k: int(v) if k == "skipped_steps" else v for k, v in trained.items()},
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds > 0 else None,
    }


def chunks(start: int, stop: int, size: int) -> Iterator[tuple[int, int]]:
    """[start, stop) cut at the multiples of `size`, so a resumed run compiles the same chunks."""
    a = start
    while a < stop:
        b = min((a // size + 1) * size, stop)
        yield a, b
        a = b


def check_finite(first_step: int, spe: int, stats: StepStats, val_E: np.ndarray, skipping: bool,
                 replica: str | None = None) -> None:
    """Raise NonFiniteLoss at the first step whose loss is not finite (unless such steps were skipped) or
    whose perplexity overflows, or at the first evaluation like that; rows of N steps from optimizer
    step `first_step`, each followed by an evaluation, `spe` steps an epoch (`replica`: which, named)."""
    skipped, tokens = stats["skipped_steps"], stats["tokens"]
    N = skipped.shape[1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        loss = np.where(tokens > 0, stats["loss_sum"] / tokens, 0.0)
        bad = (skipped > 0) if not skipping else np.zeros(skipped.shape, bool)
        bad |= np.isfinite(loss) & ~np.isfinite(np.exp(loss))  # perplexity overflows, as `perplexity` would
        bad_val = np.flatnonzero(~np.isfinite(np.exp(val_E)))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        step = first_step + row * N + col + 1
        big = loss[row, col] if np.isfinite(loss[row, col]) and skipped[row, col] == 0 else None
        raise NonFiniteLoss((step - 1) // spe + 1, step, loss=big, replica=replica)
    if len(bad_val):
        step = first_step + (bad_val[0] + 1) * N
        v = float(val_E[bad_val[0]])
        raise NonFiniteLoss(-(-step // spe), step, "validation", v if math.isfinite(v) else None, replica)


def check_trainable(cfg: Config, corpus: Corpus, model: LanguageModel, replicas: int = 1) -> Layout:
    """The device layout `cfg` trains on, after refusing a batching the training part cannot fill, a
    batch the devices cannot split, a program too large to compile or a run that cannot fit in memory
    (`budget`): what `fit` would refuse or fail on, checked before a run directory exists. Several
    `replicas` split over the devices each train a whole batch on one device, one at a time (`Replicas`)."""
    n, n_val = corpus.spans["train"][1], corpus.spans["val"][1]
    check_batching(cfg.batching, n, cfg.batch_size, cfg.num_steps)
    check_eval(eval_protocol(cfg.eval, cfg.split), n_val, cfg.batch_size, cfg.num_steps)
    lay = layout(cfg.devices, cfg.batch_size)
    budget.check_program(cfg, model.cfg.loop.unroll)
    abstract = jax.eval_shape(lambda: init_state(model, make_optimizer(cfg), cfg.seed))
    device = lay.mesh.devices.flat[0]
    shared = device.platform == "cpu"
    local = sum(d.process_index == jax.process_index() for d in lay.mesh.devices.flat)
    split = replicas > 1 and replicas >= lay.devices  # `Replicas.of`: each replica on one device, a whole batch
    state_bytes = budget.tree_bytes(abstract) * (-(-replicas // lay.devices) if split else replicas)
    need = budget.needs(cfg, model.cfg.vocab_size, state_bytes, budget.tree_bytes(abstract.params),
                        1 if split else lay.devices, local, shared, n, n_val, len(corpus.tokens),
                        corpus.tokens.dtype.itemsize, steps_per_epoch(cfg.batching, n, cfg.batch_size, cfg.num_steps))
    where = "this machine" if shared else f"each {device.device_kind}"
    budget.check_memory(cfg, need, budget.available(device), where)
    return lay


class Chunk(NamedTuple):
    """What one compiled call trained: the state after it, each replica's records (one per epoch of a
    chunk, or a round's one in a run by steps; a solo run is one replica), and whether a checkpoint is
    due after it."""

    state: TrainState
    records: list[list[dict[str, Any]]]
    save: bool


def fit_chunks(
    cfg: Config,
    corpus: Corpus,
    model: LanguageModel,
    state: TrainState | None = None,
    start: int = 0,
    per_step: bool = False,
    timings: dict[str, float] | None = None,
    on_phase: Callable[[str], None] | None = None,
    replicas: tuple[Config, ...] | None = None,
    stop: int | None = None,
    like: int | None = None,
) -> Iterator[Chunk]:
    """Train from `start` (epochs, or optimizer steps with `cfg.steps`) to the run's end, yielding a Chunk
    after each compiled call: by epochs each chunk ends at a multiple of `cfg.save_every` or at the end
    (a checkpoint due after every one); by steps each round of `cfg.eval_every` steps ends with an
    evaluation, a checkpoint due at a multiple of `cfg.save_every` or at the end. The caller writes,
    saves and decides whether to go on; leaving the loop ends training there (or `stop`, a checkpoint's
    number short of the end: the chunks and schedule stay the whole run's). Raises NonFiniteLoss,
    before yielding, for a chunk in which the loss stopped being finite.

    With `replicas`, configs that share `cfg`'s program (`program_of`: they differ by their seed, which sets
    init, data order and dropout masks, and by SHARED settings) train as one program (`Steps.for_replicas`):
    `state` and the yielded states carry a leading replica axis (padded to a multiple of the devices:
    `Replicas`; laid out as a group of `like` replicas would be, if given), and each replica's records come
    in their order.

    The fused path compiles each chunk shape ahead of time, so epoch times exclude compilation; the
    seconds spent compiling and training are added to `timings` ('compile_s', 'train_s') if given, and
    `on_phase` is told 'compiling' and then 'training' around each compilation (for progress lines)."""
    n = corpus.spans["train"][1]
    lay = check_trainable(cfg, corpus, model, 1 if replicas is None else len(replicas))
    spe = steps_per_epoch(cfg.batching, n, cfg.batch_size, cfg.num_steps)
    tx = make_optimizer(cfg, spe)
    protocol = eval_protocol(cfg.eval, cfg.split)
    steps = Steps(model, tx, cfg.num_steps, cfg.batching == "sequential", protocol == "stream",
                  retune=functools.partial(make_optimizer, cfg, spe))
    group = None if replicas is None else Replicas.of(tuple(replicas), lay, like)
    if group is not None:
        one_program([cfg, *group.cfgs], "the replicas")
    fns = steps.jitted(lay) if group is None else steps.for_replicas(lay, group.split)
    own = lay.replicated if group is None else group.by_replica  # where the state and knobs live

    def batched(ndim: int) -> NamedSharding:  # a plan whose last of `ndim` axes is the batch (a replica's)
        return lay.batched(ndim) if group is None else group.batched(ndim + 1)

    def each(make: Callable[[int], Any]) -> Any:  # a seed's arrays, or every replica's stacked
        return make(cfg.seed) if group is None else group.stacked(lambda c: make(c.seed))

    if state is None:  # compiled calls, abandoned as a compilation is (`compile_`)
        state = interrupts.wait(init_state, model, tx, cfg.seed, abandon=jax.process_count() == 1) if group is None \
            else interrupts.wait(init_replicas, model, tx, group.padded, abandon=jax.process_count() == 1)
    elif group is not None:
        state = group.pad(state)
    knobs = np.int32(cfg.seed) if group is None else group.knobs()  # what each replica's step reads of its own
    state, knobs = interrupts.wait(put_tree, (state, knobs), own)
    train, val = interrupts.wait(put_tree, (corpus.part_tokens("train"), corpus.part_tokens("val")), lay.replicated)
    val_plan = eval_plan(protocol, corpus.spans["val"][1], cfg.batch_size, cfg.num_steps)
    val_idx, val_mask = put_tree(each(lambda s: eval_sample(val_plan, cfg.eval_batches, s, protocol)), batched(2))
    timings = {} if timings is None else timings
    timings.setdefault("compile_s", 0.0)
    timings.setdefault("train_s", 0.0)
    build = functools.partial(compile_, on_phase=on_phase)
    precision = functools.partial(jax.default_matmul_precision, cfg.precision)  # where programs are traced
    count = 1 if group is None else len(group.cfgs)
    stop = cfg.length if stop is None else stop
    if cfg.steps is not None:
        yield from _fit_steps(cfg, model, fns, lay, group, state, knobs, (train, val, val_idx, val_mask), n, spe,
                              start, stop, protocol, timings, build, precision)
        return
    compiled: dict[int, Callable] = {}  # chunk length -> executable
    for a, b in chunks(start, stop, cfg.save_every):
        plan = each(lambda s, a=a, b=b: chunk_plan(s, a, b - a, n, cfg.batch_size, cfg.batching, cfg.num_steps))
        tokens_per_epoch = int(plan[1].reshape(-1, *plan[1].shape[-2:])[0].sum()) * cfg.num_steps
        idx, mask = put_tree(plan, batched(3))
        if not per_step and b - a not in compiled:
            t0 = time.perf_counter()
            with precision():
                lowered = fns.chunk.lower(state, knobs, train, val, idx, mask, val_idx, val_mask)
            compiled[b - a] = build(lowered)
            timings["compile_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        if per_step:
            stats, vals = [], []
            with precision():
                for e in range(b - a):
                    h = model.init_state(cfg.batch_size)
                    for i in range(idx.shape[1]):
                        state, stats_i, h_last = fns.step(state, knobs, train, idx[e, i], mask[e, i], h)
                        h = h_last if cfg.batching == "sequential" else h
                        stats.append(stats_i)
                    vals.append(fns.evaluate(state.params, val, val_idx, val_mask))
            shape = (b - a, idx.shape[1])
            stats_ExN = {k: jnp.stack([st[k] for st in stats]).reshape(shape) for k in stats[0]}
            val_E = jnp.stack(vals)
        else:
            state, (stats_ExN, val_E) = compiled[b - a](state, knobs, train, val, idx, mask, val_idx, val_mask)
        stats_ExN, val_E = fetch((stats_ExN, val_E))
        timings["train_s"] += time.perf_counter() - t0
        seconds = (time.perf_counter() - t0) / (b - a)
        if group is None:
            stats_ExN, val_E = jax.tree.map(lambda x: x[None], (stats_ExN, val_E))
        records = []
        for k in range(count):
            stats_k = {name: x[k] for name, x in stats_ExN.items()}
            check_finite(a * spe, spe, stats_k, val_E[k], cfg.skip_nonfinite, None if group is None else group.name(k))
            records.append([record({"epoch": a + e + 1, "step": (a + e + 1) * spe},
                                   {name: x[e] for name, x in stats_k.items()}, float(val_E[k, e]), seconds,
                                   tokens_per_epoch, protocol) for e in range(b - a)])
        yield Chunk(state, records, True)


def fit(cfg: Config, corpus: Corpus, model: LanguageModel, state: TrainState | None = None, start: int = 0,
        per_step: bool = False, timings: dict[str, float] | None = None) -> tuple[TrainState, list[dict[str, Any]]]:
    """`fit_chunks` to the end, nothing saved: the final state and every new record."""
    history: list[dict[str, Any]] = []
    for chunk in fit_chunks(cfg, corpus, model, state, start, per_step, timings):
        state, history = chunk.state, history + chunk.records[0]
    return state, history


def compile_(lowered: Any, on_phase: Callable[[str], None] | None = None) -> Callable:
    """XLA's compilation of a lowered program, off the main thread so that a signal can end the wait: with
    nothing trained since the last checkpoint it is abandoned (`interrupts.wait`; in one process only,
    for every process of a distributed run compiles alike). `on_phase` hears 'compiling', then 'training'."""
    if on_phase is not None:
        on_phase("compiling")
    compiled = interrupts.wait(lowered.compile, abandon=jax.process_count() == 1)
    if on_phase is not None:
        on_phase("training")
    return compiled


def fetch(tree: Any) -> Any:
    """A chunk's results as float64 numpy arrays, waited for off the main thread (a second Ctrl-C aborts)."""
    return jax.tree.map(lambda x: np.asarray(x, np.float64), interrupts.wait(jax.device_get, tree))


def round_plan(cfg: Config, n: int, spe: int, a: int, b: int, seed: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window starts [b - a, B], mask and epoch-start flags [b - a] of optimizer steps [a, b) of a run by
    steps (with `seed`, or the config's): step g is step g % spe of epoch g // spe, as a run by epochs
    orders them."""
    seed = cfg.seed if seed is None else seed
    parts = []
    for e in range(a // spe, (b - 1) // spe + 1):
        lo, hi = max(a - e * spe, 0), min(b - e * spe, spe)
        if cfg.batching == "sequential":
            idx, mask = (x[lo:hi] for x in sequential_plan(seed, e, n, cfg.batch_size, cfg.num_steps))
        else:  # only these steps' windows: a big text's epoch order is never held whole
            idx, mask = batch_slice(seed, e, n, cfg.batch_size, lo, hi)
        parts.append((idx, mask, np.arange(lo, hi) == 0))
    return tuple(np.concatenate(p) for p in zip(*parts))


def _fit_steps(cfg: Config, model: LanguageModel, fns: Any, lay: Layout, group: Replicas | None, state: TrainState,
               knobs: Any, data: tuple[Array, ...], n: int, spe: int, start: int, stop: int, protocol: str,
               timings: dict[str, float], build: Callable[[Any], Callable], precision: Callable) -> Iterator[Chunk]:
    """Training by steps: rounds of `eval_every` steps (from step 0, so a resumed run's rounds are the
    same), each one compiled call ending with an evaluation. With sequential batching the state runs on
    across rounds, and restarts from zeros at each epoch's start and after each checkpoint (a resumed
    run starts there from zeros too, so it ends exactly as the run left alone)."""
    train, val, val_idx, val_mask = data
    zeros = model.init_state(cfg.batch_size)
    h = (put_tree(zeros, NamedSharding(lay.mesh, P(AXIS))) if group is None
         else put_tree(group.stacked(lambda s: zeros), group.rows()))
    compiled: dict[int, Callable] = {}  # round length -> executable
    K, g = cfg.eval_every, start
    while g < stop:
        b = min((g // K + 1) * K, stop)

        def plan(s: int, g: int = g, b: int = b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            idx, mask, reset = round_plan(cfg, n, spe, g, b, s)
            reset[0] |= g % cfg.save_every == 0  # a round after a checkpoint starts from zeros
            return idx, mask, reset

        idx, mask, reset = plan(cfg.seed) if group is None else group.stacked(lambda c: plan(c.seed))
        tokens = int(mask.reshape(-1, *mask.shape[-2:])[0].sum()) * cfg.num_steps
        idx, mask = put_tree((idx, mask), lay.batched(2) if group is None else group.batched(3))
        reset = put_tree(reset, lay.replicated if group is None else group.by_replica)
        args = (state, knobs, train, val, idx, mask, reset, h, val_idx, val_mask)
        if b - g not in compiled:
            t0 = time.perf_counter()
            with precision():
                lowered = fns.round.lower(*args)
            compiled[b - g] = build(lowered)
            timings["compile_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        state, h, stats_K, val_loss = compiled[b - g](*args)
        stats_K, val_loss = fetch((stats_K, val_loss))
        seconds = time.perf_counter() - t0
        timings["train_s"] += seconds
        if group is None:
            stats_K, val_loss = jax.tree.map(lambda x: x[None], (stats_K, val_loss))
        records = []
        for k in range(1 if group is None else len(group.cfgs)):
            stats_k = {name: x[k] for name, x in stats_K.items()}
            check_finite(g, spe, {name: x[None] for name, x in stats_k.items()}, val_loss[k][None],
                         cfg.skip_nonfinite, None if group is None else group.name(k))
            records.append([record({"step": b, "epoch": b / spe}, stats_k, float(val_loss[k]), seconds, tokens,
                                   protocol)])
        yield Chunk(state, records, b % cfg.save_every == 0 or b == stop)
        g = b
