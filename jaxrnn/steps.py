"""The compiled functions of training: the loss, one optimizer step (split over the devices of a
layout), validation, and whole chunks of epochs or rounds of steps as single programs.

`Steps` holds them for one (model, optimizer) pair; `training.fit` drives them. Two paths share one step
function: the fused path compiles a whole chunk of epochs (data order, batches, steps, validation) as one
program and fetches metrics once per chunk; the per-step path calls the jitted step from Python once per
batch, as the chapters do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import Array, lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrnn.cells import State
from jaxrnn.models import LanguageModel, Params
from jaxrnn.parallel import AXIS, Layout


class TrainState(NamedTuple):
    params: Params
    opt_state: Any
    step: Array  # int32 scalar: optimizer steps taken


def init_state(model: LanguageModel, tx: optax.GradientTransformation, seed: int | tuple[int, ...]) -> TrainState:
    """Params from `seed` and a fresh optimizer state, made by one compiled call (run eagerly, the
    initialisers' many small ops would each compile, which costs most of a second). Several seeds give
    each one's, stacked along a leading axis: made one after another (`lax.map`), so each is exactly
    the solo run's (a batched init, as `vmap`'s of an orthogonal init, may round otherwise)."""

    def init(key: Array) -> TrainState:
        params = model.init(key)
        return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))

    if isinstance(seed, tuple):
        return jax.jit(lambda seeds: lax.map(lambda s: init(jax.random.key(s)), seeds))(jnp.array(seed, jnp.int32))
    return jax.jit(init)(jax.random.key(seed))


def gather(tokens: Array, starts_B: Array, length: int) -> Array:
    """The windows `tokens[s:s + length]` for each start `s`, [B, length] int32: windows are made on the
    device from the token stream (held in its smallest type), so memory holds each token once."""
    return tokens[starts_B[:, None] + jnp.arange(length)].astype(jnp.int32)


def loss_sum(model: LanguageModel, params: Params, windows_BxT1: Array, mask_B: Array, key: Array | None = None,
             state: State | None = None, keep: Array | None = None) -> tuple[Array, Array, State]:
    """Summed cross-entropy over the real (unmasked) windows' tokens, how many tokens that is, and
    the final recurrent state; `key` draws dropout masks (training only), keeping values with probability
    `keep` (None: the model's); `state` is where the recurrence starts (None: zeros)."""
    x_BxT, y_BxT = windows_BxT1[:, :-1], windows_BxT1[:, 1:]
    state = model.init_state(x_BxT.shape[0]) if state is None else state
    logits_BxTxV, state = model.forward(params, x_BxT, state, key, keep)
    ce_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, y_BxT)
    w_B = mask_B.astype(ce_BxT.dtype)
    return (ce_BxT.sum(axis=1) * w_B).sum(), w_B.sum() * y_BxT.shape[1], state


Knobs = Array | dict[str, Array]
"""A replica's own values inside a compiled program: its seed (an int32 array), or a dict of it (`seed`) and
the shape-free settings that a sweep varies inside one program: the optimizer's (`replicas.TUNED`: lr, clip,
weight decay, warm-up, by their names) and dropout's keep probability (`keep`, 1 - its rate)."""


def seed_of(knobs: Knobs) -> Array:
    return knobs["seed"] if isinstance(knobs, dict) else knobs


def keep_of(knobs: Knobs) -> Array | None:
    """A replica's own dropout keep probability, or None where the replicas share the model's."""
    return knobs.get("keep") if isinstance(knobs, dict) else None


StepStats = dict[str, Array]
"""What an optimizer step reports, by name, each stacked along the steps of a chunk or round. `tokens`
counts the batch's real tokens; a `NAME_sum` is summed over them, and its record's `train_NAME` is the
token-weighted mean (`loss_sum` -> `train_loss`); any other key is a count summed as it is
(`skipped_steps`: 1.0 where the update was non-finite). A new metric is one more key in `Steps.step`."""


class Jitted(NamedTuple):
    """The jitted functions of `Steps` for one device layout."""

    step: Callable
    evaluate: Callable
    chunk: Callable
    round: Callable


@dataclass(frozen=True)
class Steps:
    """The jitted functions of one (model, optimizer) pair. A part's tokens live on the device; batches
    of windows are gathered inside the compiled code from plans of window starts made in numpy."""

    model: LanguageModel
    tx: optax.GradientTransformation
    num_steps: int  # a window is num_steps + 1 tokens
    carry: bool = False  # sequential batching: each batch starts from the last one's final state
    stream_eval: bool = False  # evaluation carries the state from batch to batch (a plan of streams)
    mesh: Mesh | None = None  # set by `jitted`: the devices a batch is split over
    retune: Callable[..., optax.GradientTransformation] | None = None  # `tx` with a replica's tuned settings

    def optimizer(self, knobs: Knobs) -> optax.GradientTransformation:
        """`tx`, or with a replica's tuned settings (a sweep's points inside one program) `retune(**them)`:
        only the values differ, so the optimizer state's structure is `tx`'s."""
        tuned = {k: v for k, v in knobs.items() if k not in ("seed", "keep")} if isinstance(knobs, dict) else {}
        return self.retune(**tuned) if tuned else self.tx

    def grad_sums(self, params: Params, knobs: Knobs, tokens: Array, idx_B: Array, mask_B: Array, step: Array,
                  h: State | None = None) -> tuple[Params, Array, Array, State]:
        """The gradient of the summed loss of a batch, the loss sum, the token count and the final
        state, the recurrence starting from `h` (None: zeros). Dropout masks are drawn from the run's
        seed (of its `knobs`: an int32 array, so that replicas of one program each have their own, as
        their keep probability) folded with the step number (and the device), so resume is exact. `h` is
        an input, not a result of this program, so no gradient flows into earlier batches: truncated BPTT.
        Over a mesh each device
        differentiates its share of the batch and one all-reduce sums the results; left to the SPMD
        partitioner, `nn.scan`'s backward all-reduced the input kernel's gradient at every time
        step, and the Flax model gained nothing from a second device (docs/scaling.md)."""

        def local(p: Params, knobs: Knobs, tok: Array, idx: Array, mask: Array, step: Array, h: State | None
                  ) -> tuple[Params, Array, Array, State]:
            key = None
            if self.model.cfg.dropout:
                device = 0 if self.mesh is None else lax.axis_index(AXIS)  # a replica draws as one device does
                key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed_of(knobs)), step), device)
            w = gather(tok, idx, self.num_steps + 1)

            def loss(q: Params) -> tuple[Array, tuple[Array, State]]:
                s, n, h_last = loss_sum(self.model, q, w, mask, key, h, keep_of(knobs))
                return s, (n, h_last)

            (s, (n, h)), g = jax.value_and_grad(loss, has_aux=True)(p)
            return (g, s, n, h) if self.mesh is None else (*lax.psum((g, s, n), AXIS), h)

        if self.mesh is None:
            return local(params, knobs, tokens, idx_B, mask_B, step, h)
        # check_vma=False: each device's gradient is its own partial sum, which `local` psums itself
        per_device = jax.shard_map(local, mesh=self.mesh, in_specs=(P(), P(), P(), P(AXIS), P(AXIS), P(), P(AXIS)),
                                   out_specs=(P(), P(), P(), P(AXIS)), check_vma=False)
        return per_device(params, knobs, tokens, idx_B, mask_B, step, h)

    def step(self, state: TrainState, knobs: Knobs, tokens: Array, idx_B: Array, mask_B: Array,
             h: State | None = None) -> tuple[TrainState, StepStats, State]:
        """One optimizer step on the mean loss of one batch (the replica's `knobs`: its seed, and any tuned
        settings); returns the new state, its StepStats and the batch's final recurrent state. A non-finite
        step adds nothing to the sums when the optimizer skips it."""
        grad_sum, s, n, h = self.grad_sums(state.params, knobs, tokens, idx_B, mask_B, state.step, h)
        grads = jax.tree.map(lambda g: g / n, grad_sum)
        updates, opt_state = self.optimizer(knobs).update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        bad = ~jnp.isfinite(s)
        if isinstance(opt_state, optax.ApplyIfFiniteState):
            s, n = jnp.where(bad, 0.0, s), jnp.where(bad, 0.0, n)
        stats = {"loss_sum": s, "tokens": n, "skipped_steps": bad.astype(s.dtype)}
        return TrainState(params, opt_state, state.step + 1), stats, h

    def evaluate(self, params: Params, tokens: Array, idx_NxB: Array, mask_NxB: Array) -> Array:
        """Token-weighted mean loss over the windows a plan covers, each from a zero state, or with
        `stream_eval` each row from where the row of the batch before left off."""

        def body(carry, b):
            acc, h = carry
            s, n, h_last = loss_sum(self.model, params, gather(tokens, b[0], self.num_steps + 1), b[1],
                                    state=h if self.stream_eval else None)
            return (acc + jnp.stack([s, n]), h_last if self.stream_eval else h), None

        (acc, _), _ = lax.scan(body, (jnp.zeros(2), self.model.init_state(idx_NxB.shape[1])), (idx_NxB, mask_NxB))
        return acc[0] / acc[1]

    def chunk(self, state: TrainState, knobs: Knobs, train: Array, val: Array, idx_ExNxB: Array, mask_ExNxB: Array,
              val_idx: Array, val_mask: Array) -> tuple[TrainState, tuple[StepStats, Array]]:
        """Several epochs, each with its validation, as one program; returns every step's StepStats
        (each [E, N]) and each epoch's validation loss ([E]). With
        `carry`, the recurrent state runs from batch to batch and restarts from zeros each epoch."""

        def batch(carry, b):
            st, h = carry
            st, sn, h_last = self.step(st, knobs, train, b[0], b[1], h if self.carry else None)
            return (st, h_last if self.carry else h), sn

        def epoch(st, plan):
            (st, _), stats_N = lax.scan(batch, (st, self.model.init_state(plan[0].shape[1])), plan)
            return st, (stats_N, self.evaluate(st.params, val, val_idx, val_mask))

        return lax.scan(epoch, state, (idx_ExNxB, mask_ExNxB))

    def round(self, state: TrainState, knobs: Knobs, train: Array, val: Array, idx_KxB: Array, mask_KxB: Array,
              reset_K: Array, h: State, val_idx: Array, val_mask: Array) -> tuple[TrainState, State, StepStats, Array]:
        """K optimizer steps then one validation, as one program (training by steps); with `carry` the
        state `h` runs on from the round before and restarts from zeros where `reset_K` says (an
        epoch's first step). Returns the state, the last recurrent state, StepStats ([K]), the val loss."""
        zeros = self.model.init_state(idx_KxB.shape[1])

        def batch(carry, b):
            st, h = carry
            idx, mask, reset = b
            h = jax.tree.map(lambda z, x: jnp.where(reset, z, x), zeros, h)
            st, sn, h_last = self.step(st, knobs, train, idx, mask, h if self.carry else None)
            return (st, h_last if self.carry else h), sn

        (state, h), stats_K = lax.scan(batch, (state, h), (idx_KxB, mask_KxB, reset_K))
        return state, h, stats_K, self.evaluate(state.params, val, val_idx, val_mask)

    def jitted(self, lay: Layout) -> Jitted:
        """The jitted functions: batch plans split over the layout's devices and everything else
        replicated; `grad_sums` sums the gradients over the layout's mesh (parallel.py)."""
        R, b = lay.replicated, lay.batched
        H = NamedSharding(lay.mesh, P(AXIS))  # a recurrent state [B, H] (each leaf), split by rows
        self = replace(self, mesh=lay.mesh)
        return Jitted(
            step=jax.jit(self.step, donate_argnums=0, in_shardings=(R, R, R, b(1), b(1), b(2)),
                         out_shardings=(R, R, b(2))),
            evaluate=jax.jit(self.evaluate, in_shardings=(R, R, b(2), b(2)), out_shardings=R),
            chunk=jax.jit(self.chunk, donate_argnums=0, in_shardings=(R, R, R, R, b(3), b(3), b(2), b(2)),
                          out_shardings=(R, R)),
            round=jax.jit(self.round, donate_argnums=(0, 7),
                          in_shardings=(R, R, R, R, b(2), b(2), R, H, b(2), b(2)), out_shardings=(R, H, R, R)),
        )

    def for_replicas(self, lay: Layout, split: bool = True) -> Jitted:
        """`chunk` and `round` for replicas that differ by their knobs (seed, and tuned settings; every
        argument but the tokens with a leading replica axis), trained one after another (`lax.map`).
        `split`: the replicas (a multiple of the layout's devices) are split over the devices, each device
        training its share, each replica on one device with no communication between them; on CPUs this
        measured faster than `vmap`, whose batched small matmuls run slower than plain ones
        (docs/benchmarks.md). Else (fewer replicas than devices) each replica is split over the devices by
        its batch, as a solo run is."""
        R, shared = lay.replicated, (2, 3)  # the train and val tokens: held once, by every replica

        def serially(fn: Callable, arity: int) -> Callable:
            def run(*args: Any) -> Any:
                def one(own: tuple) -> Any:
                    it = iter(own)
                    return fn(*(args[i] if i in shared else next(it) for i in range(arity)))
                return lax.map(one, tuple(a for i, a in enumerate(args) if i not in shared))
            return run

        if split:
            by_replica = NamedSharding(lay.mesh, P(AXIS))

            def mapped(fn: Callable, arity: int) -> Callable:
                specs = tuple(P() if i in shared else P(AXIS) for i in range(arity))
                return jax.shard_map(serially(fn, arity), mesh=lay.mesh, in_specs=specs, out_specs=P(AXIS),
                                     check_vma=False)

            solo = replace(self, mesh=None)
            return Jitted(None, None,
                          jax.jit(mapped(solo.chunk, 8), donate_argnums=0, in_shardings=(by_replica, by_replica, R, R,
                                  *[by_replica] * 4), out_shardings=by_replica),
                          jax.jit(mapped(solo.round, 10), donate_argnums=(0, 7), in_shardings=(by_replica, by_replica,
                                  R, R, *[by_replica] * 6), out_shardings=by_replica))
        b = lay.batched  # b(n): the batch is the last of n axes, a replica's plan behind the replica axis
        H = NamedSharding(lay.mesh, P(None, AXIS))  # the replicas' recurrent states [R, B, H], split by rows
        dp = replace(self, mesh=lay.mesh)
        return Jitted(None, None,
                      jax.jit(serially(dp.chunk, 8), donate_argnums=0,
                              in_shardings=(R, R, R, R, b(4), b(4), b(3), b(3)), out_shardings=R),
                      jax.jit(serially(dp.round, 10), donate_argnums=(0, 7),
                              in_shardings=(R, R, R, R, b(3), b(3), R, H, b(3), b(3)), out_shardings=(R, H, R, R)))
