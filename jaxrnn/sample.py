"""Jitted decoding: warm-up on a batch of prompts and N new tokens as one compiled call.

d2l's `predict(prefix, num_preds)` feeds the prefix one character at a time to warm up the state,
then appends the argmax of each prediction. `generate` does the same for a batch of prompts of any
lengths (shorter prompts hold their state while longer ones warm up) inside one `jax.jit`.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from jaxrnn.data import Vocab
from jaxrnn.errors import JaxrnnError
from jaxrnn.models import LanguageModel, Params


@dataclass(frozen=True)
class Sampling:
    """How each next character is chosen: the argmax (temperature 0, as d2l's predict), or a draw, seeded
    by `seed`, from softmax(logits / temperature) among the `top_k` most likely (0: every one) and within
    the nucleus of probability `top_p` (1: all of it). Refused on construction, naming the flag to fix."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        t, k, p = self.temperature, self.top_k, self.top_p
        if not (t >= 0 and math.isfinite(t)):
            raise JaxrnnError(f"--temperature must be a finite number >= 0, got {t}; 0 decodes greedily")
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise JaxrnnError(f"--top-k must be an integer >= 0, got {k!r}; 0 keeps every token")
        if not 0 < p <= 1:
            raise JaxrnnError(f"--top-p must be in (0, 1], got {p}; 1 keeps every token")
        if t == 0 and (k or p < 1):
            raise JaxrnnError("--top-k and --top-p restrict sampling, and temperature 0 decodes greedily; "
                              "pass --temperature > 0 (1 samples from the model's own distribution)")
        if not 0 <= self.seed < 2**32:
            raise JaxrnnError(f"--seed must be in [0, 2**32), got {self.seed}; pass a smaller non-negative seed")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = Sampling()


def filter_logits(logits_BxV: Array, top_k_B: Array | None, top_p_B: Array | None) -> Array:
    """Each row's logits outside its `top_k_B` largest (0: no limit), and then outside the smallest set of
    the most likely tokens left whose renormalised probability reaches its `top_p_B` (1: no limit; the most
    likely token always stays), set to -inf; the order of Hugging Face's top-k and top-p warpers. None:
    that limit is off for every row (and costs nothing)."""
    V = logits_BxV.shape[-1]
    if top_k_B is not None:
        k_B = jnp.where(top_k_B > 0, jnp.minimum(top_k_B, V), V)
        kth_Bx1 = jnp.take_along_axis(-jnp.sort(-logits_BxV, axis=-1), k_B[:, None] - 1, axis=-1)
        logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
    if top_p_B is not None:
        sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
        probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
        before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV  # mass of the more likely tokens
        kept_BxV = jnp.where(before_BxV < top_p_B[:, None], sorted_BxV, jnp.inf)
        cut_Bx1 = jnp.where(top_p_B[:, None] < 1, kept_BxV.min(-1, keepdims=True), -jnp.inf)
        logits_BxV = jnp.where(logits_BxV < cut_Bx1, -jnp.inf, logits_BxV)
    return logits_BxV


@functools.partial(jax.jit, static_argnames=("model", "num_preds", "greedy", "unroll", "top_k", "nucleus", "kernel"))
def _generate(model: LanguageModel, params: Params, prompts_BxP: Array, lengths_B: Array, seed: Array,
              temperature: Array, top_p: Array, num_preds: int, greedy: bool, unroll: int, top_k: int,
              nucleus: bool, kernel: bool) -> Array:
    B, P = prompts_BxP.shape
    logits_BxV = jnp.zeros((B, model.cfg.vocab_size))

    def warm(carry, t):
        h, last = carry
        logits, h_new = model.forward(params, prompts_BxP[:, t, None], h)
        live = (t < lengths_B)[:, None]
        h = jax.tree.map(lambda new, old: jnp.where(live, new, old), h_new, h)
        return (h, jnp.where(live, logits[:, 0], last)), None

    (h, logits_BxV), _ = lax.scan(warm, (model.init_state(B), logits_BxV), jnp.arange(P))
    if kernel:  # greedy, every step in one Pallas kernel
        return model.greedy(params, h, jnp.argmax(logits_BxV, axis=-1), num_preds)

    def emit(carry, k):
        h, logits = carry
        if greedy:
            tok_B = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        else:
            kept = filter_logits(logits / temperature, jnp.full(B, top_k) if top_k else None,
                                 jnp.full(B, top_p) if nucleus else None)
            tok_B = jax.random.categorical(k, kept).astype(jnp.int32)
        logits, h = model.forward(params, tok_B[:, None], h)
        return (h, logits[:, 0]), tok_B

    keys = None if greedy else jax.random.split(jax.random.key(seed), num_preds)  # greedy draws no keys
    _, toks_NxB = lax.scan(emit, (h, logits_BxV), keys, length=num_preds, unroll=unroll)
    return toks_NxB.T


def generate(model: LanguageModel, params: Params, prompts: list[np.ndarray], num_preds: int,
             how: Sampling = GREEDY, unroll: int = 8) -> np.ndarray:
    """`num_preds` new token ids for each prompt (lists of ids, each at least one long), as one
    compiled call, each chosen `how` says (greedy by default). Each prompt of a batch draws its own.

    Greedy decoding runs as one Pallas kernel where the model's loop says so (`cells.Loop.decode`, as
    `execution.resolve` decides it)."""
    check_length(num_preds)
    if any(len(p) == 0 for p in prompts):
        raise JaxrnnError("the prompt is empty; pass --prefix with at least one character")
    if num_preds == 0:
        return np.zeros((len(prompts), 0), np.int32)
    lengths = np.array([len(p) for p in prompts], np.int32)
    padded = np.zeros((len(prompts), lengths.max()), np.int32)
    for i, p in enumerate(prompts):
        padded[i, : len(p)] = p
    # numpy arguments, not eager jnp ops: each of those costs tens of microseconds, a tenth of a
    # 1000-character decode on a CPU
    toks = _generate(model, params, padded, lengths, np.uint32(how.seed), np.float32(max(how.temperature, 1e-6)),
                     np.float32(how.top_p), num_preds, how.greedy, max(1, min(unroll, num_preds)),
                     min(how.top_k, model.cfg.vocab_size), how.top_p < 1.0,
                     model.cfg.loop.decode == "kernel" and how.greedy)
    return np.asarray(toks)


def check_length(num_preds: int) -> None:
    """Refuse a number of characters to generate that is not 0 or more."""
    if num_preds < 0:
        raise JaxrnnError(f"--num-preds must be >= 0, got {num_preds}; pass 0 or more")


def encode_prompt(vocab: Vocab, prefix: str) -> np.ndarray:
    """Prompt ids; characters the vocab lacks become `<unk>`, with a warning on stderr."""
    if not prefix:
        raise JaxrnnError("the prompt is empty; pass --prefix with at least one character")
    unknown = vocab.unknown_chars(prefix)
    if unknown:
        shown = "".join(unknown)
        print(f"jaxrnn: warning: prompt characters {shown!r} are not in the vocab; read as <unk>", file=sys.stderr)
    return vocab.encode(prefix)


def predict(model: LanguageModel, params: Params, vocab: Vocab, prefix: str, num_preds: int,
            how: Sampling = GREEDY) -> str:
    """d2l's predict: the prefix followed by `num_preds` generated characters."""
    return samples(model, params, vocab, prefix, num_preds, 1, how)[0]


def samples(model: LanguageModel, params: Params, vocab: Vocab, prefix: str, num_preds: int, num_samples: int = 1,
            how: Sampling = GREEDY) -> list[str]:
    """`num_samples` continuations of one prefix in one batch, each drawing its own characters
    (all the same when greedy)."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise JaxrnnError(f"--num-samples must be a positive integer, got {num_samples!r}; pass 1 or more")
    prompts = [encode_prompt(vocab, prefix)] * num_samples
    toks = generate(model, params, prompts, num_preds, how)
    return [prefix + vocab.decode(t) for t in toks]
