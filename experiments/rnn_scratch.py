"""d2l 1.0 section 9.5, "Recurrent Neural Network Implementation from Scratch", on jaxrnn.

Prints what the chapter shows, in its order: the RNN's and the LM's shape checks, the gradient norm
before and after clipping, the untrained model's text, one line of perplexities per epoch, then the
final perplexity and text. Results go to stdout, progress notes to stderr. Run from the repo root:

    JAXRNN_DATA_DIR=DIR_WITH_timemachine.txt python experiments/rnn_scratch.py [--epochs 100] [--hidden 32]
        [--per-step] [--out RUN_DIR [--force]] [--plot ppl.png]
"""

from __future__ import annotations

import sys
from typing import Any

import chapter
import jax
import jax.numpy as jnp
import optax

import jaxrnn
from jaxrnn.cells import rnn_init, rnn_scan
from jaxrnn.sample import predict
from jaxrnn.steps import loss_sum


def check_len(a: Any, n: int, name: str) -> None:
    """d2l's check_len, printing what it checked."""
    if len(a) != n:
        raise AssertionError(f"{name}: length {len(a)} != expected length {n}")
    print(f"check_len ok: len({name}) == {n}")


def check_shape(a: Any, shape: tuple[int, ...], name: str) -> None:
    """d2l's check_shape, printing what it checked."""
    if tuple(a.shape) != shape:
        raise AssertionError(f"{name}: shape {tuple(a.shape)} != expected shape {shape}")
    print(f"check_shape ok: {name}.shape == {shape}")



def main(argv: list[str] | None = None) -> int:
    args = chapter.parse_args(__doc__, argv)
    cfg, corpus = chapter.setup("scratch", args)
    vocab, model = corpus.vocab, jaxrnn.build_model(cfg, len(corpus.vocab))
    params = jax.jit(model.init)(jax.random.key(cfg.seed))  # the init that training starts from

    # 9.5.1 The RNN alone: 2 sequences of 100 one-hot steps of 16 inputs, 32 hidden units.
    batch_size, num_inputs, num_hiddens, num_steps = 2, 16, 32, 100

    @jax.jit
    def rnn_outputs(key: jax.Array) -> tuple[jax.Array, jax.Array]:
        k_init, k_x = jax.random.split(key)
        X = jax.nn.one_hot(jax.random.randint(k_x, (num_steps, batch_size), 0, num_inputs), num_inputs)
        return rnn_scan(rnn_init(k_init, num_inputs, num_hiddens), jnp.zeros((batch_size, num_hiddens)), X)

    state, outputs = rnn_outputs(jax.random.key(0))
    check_len(outputs, num_steps, "outputs")
    check_shape(outputs[0], (batch_size, num_hiddens), "outputs[0]")
    check_shape(state, (batch_size, num_hiddens), "state")

    # 9.5.2 The LM: one-hot inputs are time-major, the logits are (batch, steps, vocab).
    check_shape(jax.nn.one_hot(jnp.arange(10).reshape((2, 5)).T, 28), (5, 2, 28), "one_hot(X.T, 28)")
    tokens = jnp.ones((batch_size, num_steps), jnp.int32)
    logits, _ = jax.eval_shape(model.forward, params, tokens, model.init_state(batch_size))  # traced, not compiled
    check_shape(logits, (batch_size, num_steps, len(vocab)), "logits")

    # 9.5.3 Gradient clipping (training clips the same way, at cfg.clip): the gradients of one batch.
    def mean_loss(params: Any, batch: jax.Array) -> jax.Array:
        total, count, _ = loss_sum(model, params, batch, jnp.ones(len(batch), bool))
        return total / count

    @jax.jit
    def grad_norms(params: Any, batch: jax.Array, theta: float) -> tuple[jax.Array, jax.Array]:
        grads = jax.grad(mean_loss)(params, batch)
        clipped, _ = optax.clip_by_global_norm(theta).update(grads, optax.EmptyState())
        return optax.tree_utils.tree_norm(grads), optax.tree_utils.tree_norm(clipped)

    theta = 1.0
    with jax.default_matmul_precision(cfg.precision):
        before, after = grad_norms(params, jnp.asarray(corpus.train[: cfg.batch_size]), theta)
    print(f"grad_norm before clipping {float(before):.4f}, after clipping (theta={theta:g}) {float(after):.4f}")

    # Decoding before training (random text), 9.5.4 training, 9.5.5 decoding after.
    print(repr(predict(model, params, vocab, "it has", 20)))

    chapter.train_and_report(cfg, corpus, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
