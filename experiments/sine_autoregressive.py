"""d2l's sequence-model section with an RNN: 1-step and k-step-ahead prediction of a noisy sine.

The data are d2l's: x_t = sin(0.01 t) + N(0, 0.2^2) for t = 1..1000; the first 600 steps train, the
rest test. The baseline is d2l's linear autoregressive model on the last tau = 4 values (fitted here
in closed form, the least-squares optimum its SGD approaches). The RNN is jaxrnn's scratch cell
(`cells.dense_unroll`, any cell of `cells.CELLS`) reading the series one value at a time, with a linear
head predicting the next value, trained with Adam on windows of the training part (MSE). k-step
predictions feed each model its own outputs for k steps after the observed past, as d2l does.

Prints the test MSE of both models for each k to stdout (a markdown table); `--plot` draws the
series and the predictions. Run from the repo root (no corpus needed):

    python experiments/sine_autoregressive.py [--cell rnn] [--hidden 16] [--steps 2000] [--plot sine.png]
"""

from __future__ import annotations

import argparse
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrnn import cells

T, TAU, N_TRAIN, KS = 1000, 4, 600, (1, 4, 16, 64)


def series(seed: int) -> np.ndarray:
    """d2l's data: sin(0.01 t) plus Gaussian noise of std 0.2, t = 1..T."""
    t = np.arange(1, T + 1, dtype=np.float64)
    return np.sin(0.01 * t) + np.random.default_rng(seed).normal(0, 0.2, T)


def linear_fit(x: np.ndarray) -> np.ndarray:
    """Least squares for x_t ~ w . x_{t-tau..t-1} + b on the training part: returns [w..., b]."""
    feats = np.stack([x[i: N_TRAIN - TAU + i] for i in range(TAU)], axis=1)
    A = np.hstack([feats, np.ones((len(feats), 1))])
    return np.linalg.lstsq(A, x[TAU:N_TRAIN], rcond=None)[0]


def linear_ahead(coef: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """k-step-ahead predictions of x_t for t = TAU + k - 1 .. T - 1: the model sees the true values up
    to t - k and its own predictions after them."""
    cols = [x[i: T - k - TAU + 1 + i] for i in range(TAU)]  # the last TAU true values before each start
    for _ in range(k):
        cols.append(np.stack(cols[-TAU:], axis=1) @ coef[:TAU] + coef[TAU])
    return cols[-1]


def rnn_init(key: jax.Array, cell: str, hidden: int) -> dict:
    k_cell, k_head = jax.random.split(key)
    return {"cell": cells.cell_init(k_cell, 1, hidden, 0.5, cell),
            "head": {"w": 0.1 * jax.random.normal(k_head, (hidden, 1)), "b": jnp.zeros(1)}}


def rnn_run(p: dict, cell: str, x_TxB: jax.Array, state=None):
    """Read a batch of series (time-major); returns (state, the prediction of each next value)."""
    B, H = x_TxB.shape[1], p["head"]["w"].shape[0]
    state = cells.zero_state(cell, B, H) if state is None else state
    state, hs = cells.dense_unroll(p["cell"], state, x_TxB[..., None], cells.Loop(cell))
    return state, (hs @ p["head"]["w"] + p["head"]["b"])[..., 0]


def train_rnn(x: np.ndarray, cell: str, hidden: int, steps: int, seed: int, window: int = 64) -> dict:
    """Adam on random windows of the training part, MSE of every next-value prediction."""
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.01))
    p = rnn_init(jax.random.key(seed), cell, hidden)
    starts = np.arange(N_TRAIN - window)
    data = jnp.asarray(np.stack([x[s: s + window + 1] for s in starts]), jnp.float32)

    @jax.jit
    def step(p, opt, key):
        w = data[jax.random.choice(key, len(starts), (32,))].T  # [window + 1, 32]

        def mse(q):
            return jnp.mean((rnn_run(q, cell, w[:-1])[1] - w[1:]) ** 2)

        loss, g = jax.value_and_grad(mse)(p)
        updates, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, updates), opt, loss

    opt = tx.init(p)
    for i in range(steps):
        p, opt, loss = step(p, opt, jax.random.key(seed * 100003 + i))
        if (i + 1) % 500 == 0:
            print(f"step {i + 1}: train mse {float(loss):.4f}", file=sys.stderr)
    return p


@functools.partial(jax.jit, static_argnums=(1, 3))
def rnn_ahead(p: dict, cell: str, x: jax.Array, k: int) -> jax.Array:
    """k-step-ahead predictions of x_t for t = TAU + k - 1 .. T - 1, aligned with `linear_ahead`: the
    RNN reads the true series up to t - k (its state carries the whole past), then its own outputs,
    every starting point as one row of a batch."""

    def read(state, v):
        state, y = rnn_run(p, cell, v[None, None], state)
        return state, (state, y[0, 0])

    _, (states, y) = jax.lax.scan(read, cells.zero_state(cell, 1, p["head"]["w"].shape[0]), x)
    state = jax.tree.map(lambda a: a[TAU - 1: T - k, 0], states)  # [N, H]: after x_0..x_j, j >= TAU - 1
    y = y[TAU - 1: T - k]  # each row's 1-step prediction
    for _ in range(k - 1):
        state, out = rnn_run(p, cell, y[None], state)
        y = out[0]
    return y


def main(argv: list[str] | None = None) -> int:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--cell", default="rnn", choices=list(cells.CELLS))
    a.add_argument("--hidden", type=int, default=16)
    a.add_argument("--steps", type=int, default=2000, help="Adam steps (default 2000)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--plot", metavar="FILE", help="save the series and predictions")
    args = a.parse_args(argv)
    x = series(args.seed)
    coef = linear_fit(x)
    p = train_rnn(x, args.cell, args.hidden, args.steps, args.seed)
    xj = jnp.asarray(x, jnp.float32)
    preds = {k: (linear_ahead(coef, x, k), np.asarray(rnn_ahead(p, args.cell, xj, k), np.float64)) for k in KS}
    print(f"test MSE (t > {N_TRAIN}) of k-step-ahead predictions; noise variance 0.04; RNN: {args.cell}, "
          f"hidden {args.hidden}")
    print(f"| k | linear AR (tau={TAU}) | RNN |")
    print("| ---: | ---: | ---: |")
    for k, (lin, rnn) in preds.items():
        t = np.arange(TAU + k - 1, T)
        test = t > N_TRAIN
        print(f"| {k} | {np.mean((lin[test] - x[t][test]) ** 2):.4f} | {np.mean((rnn[test] - x[t][test]) ** 2):.4f} |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
        for ax, (name, j) in zip(axes, (("linear AR", 0), (f"RNN ({args.cell})", 1))):
            ax.plot(np.arange(T), x, color="0.7", label="data")
            for k, pair in preds.items():
                ax.plot(np.arange(TAU + k - 1, T), pair[j], label=f"{k}-step")
            ax.axvline(N_TRAIN, color="k", lw=0.5)
            ax.set(title=name, ylim=(-2, 2))
            ax.legend(loc="lower left", ncol=5, fontsize=8)
        axes[-1].set_xlabel("t")
        fig.savefig(args.plot, bbox_inches="tight", dpi=120)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
