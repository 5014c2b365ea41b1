"""The order of training and evaluation: which windows each batch reads, epoch by epoch, for random
batches (a shuffle per epoch), sequential streams (the state carried across batches) and the
evaluation protocols. Everything here is numpy, and a function of (seed, epoch) only, so a resumed run
reads exactly what the run left alone would have read.
"""

from __future__ import annotations

import numpy as np

from jaxrnn.errors import DataError

BIG_PART = 1 << 22  # windows: a part larger than this has its epoch order computed a slice at a time


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled window order of one epoch: a function of (seed, epoch) only."""
    return order_slice(seed, epoch, n, 0, n)


def order_slice(seed: int, epoch: int, n: int, lo: int, hi: int) -> np.ndarray:
    """Positions [lo, hi) of an epoch's shuffled order of `n` windows (int32). Up to BIG_PART windows it
    is numpy's permutation (the chapters' sizes; every figure was measured with it); above, a keyed
    pseudo-random permutation computed for the slice alone, so that a run by steps on a 100 MB text
    holds a round's windows, not an epoch's order of 4 bytes a character."""
    if n <= BIG_PART:
        return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)[lo:hi]
    keys = np.random.default_rng([seed, epoch, 1]).integers(0, 1 << 63, size=4, dtype=np.uint64)
    x = _feistel(np.arange(lo, hi, dtype=np.uint64), n, keys)
    while (out := x >= n).any():  # cycle-walk: apply again until inside [0, n); the domain is < 4n
        x[out] = _feistel(x[out], n, keys)
    return x.astype(np.int32)


def _feistel(x: np.ndarray, n: int, keys: np.ndarray) -> np.ndarray:
    """A bijection of [0, 2^k) (k even, 2^k >= n): one balanced Feistel round per key, splitmix64's
    finalizer as the round function."""
    half = max(1, (int(n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    left, right = x >> np.uint64(half), x & mask
    with np.errstate(over="ignore"):
        for key in keys:
            z = right ^ key
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            left, right = right, left ^ ((z ^ (z >> np.uint64(31))) & mask)
    return (left << np.uint64(half)) | right


def batch_slice(seed: int, epoch: int, n: int, batch_size: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Batches [lo, hi) of an epoch's random plan, as `batch_plan(epoch_order(seed, epoch, n), batch_size)`
    has them, computing only their windows."""
    a, b = lo * batch_size, min(hi * batch_size, n)
    idx = np.zeros((hi - lo) * batch_size, np.int32)
    idx[: max(b - a, 0)] = order_slice(seed, epoch, n, a, b)
    mask = np.arange(a, a + len(idx)) < n
    return idx.reshape(hi - lo, batch_size), mask.reshape(hi - lo, batch_size)


def batch_plan(order: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut an order into full batches; the last, partial batch is padded with index 0 and masked.

    Returns (indices [num_batches, batch_size], mask [num_batches, batch_size]). Like d2l, every window
    is used once per epoch and the partial batch is a step of its own.
    """
    n = len(order)
    num_batches = -(-n // batch_size)
    idx = np.zeros(num_batches * batch_size, np.int32)
    idx[:n] = order
    mask = np.zeros(num_batches * batch_size, bool)
    mask[:n] = True
    return idx.reshape(num_batches, batch_size), mask.reshape(num_batches, batch_size)


def sequential_plan(seed: int, epoch: int, n: int, batch_size: int, num_steps: int, offset: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """d2l's sequential partitioning over `n` windows: after a random offset in [0, num_steps) (or the
    `offset` given), the text is cut into `batch_size` streams of `n // batch_size` windows, and batch
    i takes each stream's i-th stretch of `num_steps` tokens, so row r of batch i + 1 continues row r
    of batch i (its first input is the token after batch i's last input). Returns (window starts
    [num_batches, batch_size], an all-true mask); the shapes do not depend on the epoch."""
    stream = n // batch_size
    if offset is None:
        offset = np.random.default_rng([seed, epoch]).integers(num_steps)
    starts = offset + stream * np.arange(batch_size)[None, :] + num_steps * np.arange(stream // num_steps)[:, None]
    return starts.astype(np.int32), np.ones(starts.shape, bool)


def eval_protocol(evaluation: str, split: tuple[float, ...] | None) -> str:
    """How a validation or test part is read: 'd2l-windows' (d2l's counts: every window at stride 1,
    each from an empty state, as the chapters), 'blocks' (a --split part: non-overlapping windows, each
    token predicted once from an empty state at each window start, as nanoGPT's blocks) or 'stream'
    (one pass with the state carried, each token with its whole left context, as char-rnn)."""
    if evaluation == "stream":
        return "stream"
    return "d2l-windows" if split is None else "blocks"


def check_eval(protocol: str, n: int, batch_size: int, num_steps: int) -> None:
    """Refuse a stream evaluation whose streams are shorter than one window (before any plan is made)."""
    if protocol == "stream" and n // batch_size < num_steps:
        raise DataError(f"--eval stream cuts the {n} windows of a part into {batch_size} streams of "
                        f"{n // batch_size}, fewer than --num-steps {num_steps}; use --eval windows or "
                        f"--batch-size {max(n // num_steps, 1)} or less")


def eval_plan(protocol: str, n: int, batch_size: int, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The window starts [num_batches, batch_size] and mask that read a part of `n` windows by
    `protocol`; for 'stream', row r of batch i + 1 continues row r of batch i."""
    check_eval(protocol, n, batch_size, num_steps)
    if protocol == "stream":
        return sequential_plan(0, 0, n, batch_size, num_steps, offset=0)
    return batch_plan(np.arange(0, n, num_steps if protocol == "blocks" else 1, dtype=np.int32), batch_size)


def eval_sample(plan: tuple[np.ndarray, np.ndarray], batches: int | None, seed: int, protocol: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """At most `batches` batches of an evaluation plan, the same ones at every evaluation (a function of
    `seed`), like nanoGPT's eval_iters but fixed: drawn at random from its windows, or, for 'stream'
    (each batch continues the one before), its first batches. None: the whole plan."""
    idx, mask = plan
    if batches is None or batches >= len(idx):
        return idx, mask
    if protocol == "stream":
        return idx[:batches], mask[:batches]
    starts = np.random.default_rng([seed, 1 << 30]).choice(idx[mask], batches * idx.shape[1], replace=False)
    return batch_plan(np.sort(starts).astype(np.int32), idx.shape[1])


def steps_per_epoch(batching: str, n: int, batch_size: int, num_steps: int) -> int:
    """Optimizer steps in one epoch over `n` training windows."""
    return -(-n // batch_size) if batching == "random" else (n // batch_size) // num_steps


def check_batching(batching: str, n: int, batch_size: int, num_steps: int) -> None:
    """Refuse a sequential partitioning whose streams are shorter than one batch's stretch."""
    if batching == "sequential" and steps_per_epoch(batching, n, batch_size, num_steps) == 0:
        raise DataError(
            f"--batching sequential cuts the {n} training windows into {batch_size} streams of {n // batch_size}, "
            f"fewer than --num-steps {num_steps}; "
            + (f"use --batch-size {n // num_steps} or less" if n >= num_steps else "lower --num-steps"))


def chunk_plan(seed: int, first_epoch: int, num_epochs: int, n: int, batch_size: int, batching: str = "random",
               num_steps: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Batch plans for epochs [first_epoch, first_epoch + num_epochs), stacked: [E, num_batches, batch_size]."""
    epochs = range(first_epoch, first_epoch + num_epochs)
    if batching == "sequential":
        plans = [sequential_plan(seed, e, n, batch_size, num_steps) for e in epochs]
    else:
        plans = [batch_plan(epoch_order(seed, e, n), batch_size) for e in epochs]
    return np.stack([p[0] for p in plans]), np.stack([p[1] for p in plans])
