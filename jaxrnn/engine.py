"""Continuous batching for a served model: many requests' decodes as one compiled call per chunk.

Each request's choice holds a slot: its recurrent state and last logits, kept on the host between calls.
A call advances every busy slot by `chunk` characters: a slot still reading its prompt is fed the prompt's
next characters (the warm-up of d2l's `predict`, chunk by chunk), one that has read it draws its next
characters, so a new request joins the batch at the next chunk boundary whatever the others are doing.
The batch is padded to a bucket (1, 2, 4, ... `max_batch`) and every bucket's programs (greedy only, and
with sampling) are compiled by `warm`, so serving never compiles. Each step is `model.forward` on one
token, as `sample.generate`'s, and on CPUs a batch of up to 32 rows computes each row's bits as a batch
of one does (measured), so a greedy request gets `jaxrnn sample`'s text character for character.
"""

from __future__ import annotations

import functools
import queue
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from jaxrnn.models import LanguageModel, Params
from jaxrnn.sample import filter_logits


@dataclass
class Job:
    """One choice of a request: its prompt ids, how many characters to make and how, and where they go.
    `emit(ids, done)` is called from the engine's thread with each chunk's new characters."""

    prompt: np.ndarray
    max_tokens: int
    emit: Callable[[np.ndarray, bool], None]
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stream: int = 0  # which of a request's choices: draws from (seed, stream) so choices differ
    fed: int = 0  # prompt characters read so far
    made: int = 0  # characters generated so far
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def sampled(self) -> bool:
        return self.temperature > 0


def buckets(max_batch: int) -> list[int]:
    """The batch sizes compiled: powers of two up to `max_batch`, and `max_batch` itself."""
    sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
    return sizes + [max_batch]


@functools.partial(jax.jit, static_argnames=("model", "sampled"))
def decode_chunk(model: LanguageModel, params: Params, state: object, logits_BxV: Array, forced_BxC: Array,
                 forced_B: Array, seed_B: Array, stream_B: Array, made_B: Array, temperature_B: Array,
                 top_k_B: Array, top_p_B: Array, sampled: bool) -> tuple[Array, object, Array]:
    """C steps of every row: step t feeds the row's forced (prompt) token while t < forced_B, else the token
    drawn from its last logits (argmax where its temperature is 0; a draw keyed by (seed, stream, position)
    otherwise, so a row's text does not depend on its batch). Returns the tokens fed [B, C] (the drawn
    ones are those at t >= forced_B), the state and the last logits."""

    def step(carry, t):
        h, logits = carry
        tok_B = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        if sampled:
            def draw(seed, stream, pos, row):
                return jax.random.categorical(jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream),
                                                                 pos), row)

            scaled = logits / jnp.maximum(temperature_B, 1e-6)[:, None]
            kept = filter_logits(scaled, top_k_B, top_p_B)
            drawn_B = jax.vmap(draw)(seed_B, stream_B, made_B + t - forced_B, kept).astype(jnp.int32)
            tok_B = jnp.where(temperature_B > 0, drawn_B, tok_B)
        tok_B = jnp.where(t < forced_B, forced_BxC[:, t], tok_B)
        logits, h = model.forward(params, tok_B[:, None], h)
        return (h, logits[:, 0]), tok_B

    C = forced_BxC.shape[1]
    (state, logits_BxV), toks_CxB = lax.scan(step, (state, logits_BxV), jnp.arange(C))
    return toks_CxB.T, state, logits_BxV


class Engine:
    """The slots of one model and the thread that runs their chunks; `submit` from any thread."""

    def __init__(self, model: LanguageModel, params: Params, precision: str = "default", max_batch: int = 32,
                 chunk: int = 16) -> None:
        self.model, self.params, self.precision = model, params, precision
        self.max_batch, self.chunk, self.sizes = max_batch, chunk, buckets(max_batch)
        zero = model.init_state(1)
        self.treedef = jax.tree.structure(zero)
        self.state = [np.zeros((max_batch, *a.shape[1:]), a.dtype) for a in jax.tree.leaves(zero)]
        self.logits = np.zeros((max_batch, model.cfg.vocab_size), np.float32)
        self.slots: list[Job | None] = [None] * max_batch
        self.waiting: queue.Queue[Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._serve, name="jaxrnn-engine", daemon=True)
        self.calls = 0
        self.failed: Exception | None = None  # what ended the engine's thread, if not `stop`
        self.ending = threading.Lock()

    def warm(self) -> None:
        """Compile every bucket's programs (greedy and sampled) now, not when a request first needs them."""
        for size in self.sizes:
            for sampled in (False, True):
                self._call(np.arange(size) % self.max_batch, [None] * size, sampled)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """End the engine's thread after its current chunk; jobs still queued or running are cancelled."""
        self.waiting.put(None)
        self.thread.join()

    def submit(self, job: Job) -> None:
        self.waiting.put(job)
        if self.failed is not None:  # no thread takes it: ended now rather than left waiting
            self._end(iter_queue(self.waiting))

    @property
    def busy(self) -> int:
        return sum(j is not None for j in self.slots)

    def _admit(self) -> bool:
        """Move queued jobs into free slots, blocking while nothing runs: a request that finds the engine idle
        starts at once, and those that come while a chunk runs join at its end. False once `stop` was called."""
        while None in self.slots:
            try:
                job = self.waiting.get() if self.busy == 0 else self.waiting.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return False
            if not job.cancelled.is_set():
                self.slots[self.slots.index(None)] = job
        return True

    def _serve(self) -> None:
        try:
            while self._admit():
                for i, job in enumerate(self.slots):  # a client gone: its slot is free for the next
                    if job is not None and job.cancelled.is_set():
                        self.slots[i] = None
                rows = [i for i, job in enumerate(self.slots) if job is not None]
                if rows:
                    self._advance(rows)
        except Exception as e:  # a bug: said, and every job still waiting is ended rather than left hanging
            self.failed = e
            traceback.print_exc(file=sys.stderr)
        finally:
            self._end([*self.slots, *iter_queue(self.waiting)])

    def _end(self, jobs: list[Job | None]) -> None:
        """End jobs that will not run (the thread has stopped): each done once, with what it had."""
        with self.ending:
            for job in jobs:
                if job is not None and not job.cancelled.is_set():
                    job.cancelled.set()
                    job.emit(np.zeros(0, np.int32), True)

    def _advance(self, rows: list[int]) -> None:
        """One chunk of the busy slots `rows`, then each job's new characters to its `emit`."""
        jobs = [self.slots[i] for i in rows]
        size = next(s for s in self.sizes if s >= len(rows))
        padded = rows + [rows[0]] * (size - len(rows))  # filler rows compute and are dropped
        toks, forced = self._call(np.array(padded), jobs + [None] * (size - len(rows)),
                                  any(j.sampled for j in jobs))
        for r, i, job in zip(range(len(rows)), rows, jobs):
            new = toks[r, forced[r]:][: job.max_tokens - job.made]
            job.fed += forced[r]
            job.made += len(new)
            done = job.made >= job.max_tokens
            if done:
                self.slots[i] = None
            if len(new) or done:
                job.emit(new, done)

    def _call(self, rows: np.ndarray, jobs: list[Job | None], sampled: bool) -> tuple[np.ndarray, np.ndarray]:
        """Run `decode_chunk` on slots `rows` (None jobs: filler, or warm-up) and keep the state they reach."""
        B, C = len(rows), self.chunk
        forced_BxC, forced = np.zeros((B, C), np.int32), np.full(B, C, np.int32)
        seed, stream, made = np.zeros(B, np.uint32), np.zeros(B, np.uint32), np.zeros(B, np.int32)
        temperature, top_k, top_p = np.zeros(B, np.float32), np.zeros(B, np.int32), np.ones(B, np.float32)
        for b, job in enumerate(jobs):
            if job is None:
                continue
            if job.fed == 0:  # a new job's slot starts from the zero state
                for leaf in self.state:
                    leaf[rows[b]] = 0
                self.logits[rows[b]] = 0
            part = job.prompt[job.fed: job.fed + C]
            forced_BxC[b, : len(part)], forced[b] = part, len(part)
            seed[b], stream[b], made[b] = job.seed, job.stream, job.made
            temperature[b], top_k[b], top_p[b] = job.temperature, job.top_k, job.top_p
        state = jax.tree.unflatten(self.treedef, [leaf[rows] for leaf in self.state])
        with jax.default_matmul_precision(self.precision):
            toks, state, logits = decode_chunk(self.model, self.params, state, self.logits[rows], forced_BxC, forced,
                                               seed, stream, made, temperature, top_k, top_p, sampled)
        self.calls += 1
        live = [b for b, job in enumerate(jobs) if job is not None]
        for leaf, new in zip(self.state, jax.tree.leaves(state)):
            leaf[rows[live]] = np.asarray(new)[live]
        self.logits[rows[live]] = np.asarray(logits)[live]
        return np.asarray(toks), forced


def iter_queue(q: queue.Queue) -> list:
    """What is left in a queue, taken out."""
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items
