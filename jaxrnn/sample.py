"""Jitted decoding: warm-up on a batch of prompts and N new tokens as one compiled call.

d2l's `predict(prefix, num_preds)` feeds the prefix one character at a time to warm up the state,
then appends the argmax of each prediction. `generate` does the same for a batch of prompts of any
lengths (shorter prompts hold their state while longer ones warm up) inside one `jax.jit`.
"""

from __future__ import annotations

import functools
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from jaxrnn.data import Vocab
from jaxrnn.errors import JaxrnnError
from jaxrnn.models import LanguageModel, Params


@functools.partial(jax.jit, static_argnames=("model", "num_preds", "greedy", "unroll"))
def _generate(model: LanguageModel, params: Params, prompts_BxP: Array, lengths_B: Array, key: Array,
              temperature: Array, num_preds: int, greedy: bool, unroll: int) -> Array:
    B, P = prompts_BxP.shape
    logits_BxV = jnp.zeros((B, model.vocab_size))

    def warm(carry, t):
        h, last = carry
        logits, h_new = model.forward(params, prompts_BxP[:, t, None], h)
        live = (t < lengths_B)[:, None]
        h = jax.tree.map(lambda new, old: jnp.where(live, new, old), h_new, h)
        return (h, jnp.where(live, logits[:, 0], last)), None

    (h, logits_BxV), _ = lax.scan(warm, (model.init_state(B), logits_BxV), jnp.arange(P))

    def emit(carry, k):
        h, logits = carry
        if greedy:
            tok_B = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        else:
            tok_B = jax.random.categorical(k, logits / temperature).astype(jnp.int32)
        logits, h = model.forward(params, tok_B[:, None], h)
        return (h, logits[:, 0]), tok_B

    keys = None if greedy else jax.random.split(key, num_preds)  # greedy decoding draws no keys
    _, toks_NxB = lax.scan(emit, (h, logits_BxV), keys, length=num_preds, unroll=unroll)
    return toks_NxB.T


def generate(model: LanguageModel, params: Params, prompts: list[np.ndarray], num_preds: int,
             temperature: float = 0.0, seed: int = 0, unroll: int = 8) -> np.ndarray:
    """`num_preds` new token ids for each prompt (lists of ids, each at least one long): greedy when
    `temperature` is 0, else sampled from softmax(logits / temperature) with the given seed."""
    if num_preds < 0:
        raise JaxrnnError(f"--num-preds must be >= 0, got {num_preds}; pass 0 or more")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise JaxrnnError(f"--temperature must be a finite number >= 0, got {temperature}; 0 decodes greedily")
    if any(len(p) == 0 for p in prompts):
        raise JaxrnnError("the prompt is empty; pass --prefix with at least one character")
    if num_preds == 0:
        return np.zeros((len(prompts), 0), np.int32)
    lengths = np.array([len(p) for p in prompts], np.int32)
    padded = np.zeros((len(prompts), lengths.max()), np.int32)
    for i, p in enumerate(prompts):
        padded[i, : len(p)] = p
    toks = _generate(model, params, jnp.asarray(padded), jnp.asarray(lengths), jax.random.key(seed),
                     jnp.float32(max(temperature, 1e-6)), num_preds, temperature == 0.0, max(1, min(unroll, num_preds)))
    return np.asarray(toks)


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
            temperature: float = 0.0, seed: int = 0) -> str:
    """d2l's predict: the prefix followed by `num_preds` generated characters."""
    toks = generate(model, params, [encode_prompt(vocab, prefix)], num_preds, temperature, seed)
    return prefix + vocab.decode(toks[0])
