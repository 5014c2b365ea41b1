"""What cells and their Pallas kernels share: a cell's state, how a matmul cell's recurrent params split,
and the matmuls both compute at the caller's precision.

A cell's state is `h [B, H]`, or a tuple whose first element is `h` (the LSTM's `(h, c)`; a cell with
more state adds elements after h); each cell declares its initial value (`cells.Cell.state`). The
kernels read and replace `h` through `hidden` and `with_hidden`, so they run any such state.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import Array, lax

State = Any  # h [B, H], or a tuple (h, ...)
CellParams = dict[str, Array]  # W_xh [V, G*H], b_h [G*H], and what the step reads: W_hh [H, G*H], ...


def zeros_h(batch_size: int, hidden_size: int, dtype: Any = jnp.float32) -> State:
    """The initial state of a cell whose state is h: zeros."""
    return jnp.zeros((batch_size, hidden_size), dtype)


def zeros_hc(batch_size: int, hidden_size: int, dtype: Any = jnp.float32) -> State:
    """The initial state of a cell whose state is (h, c), as the LSTM's: zeros."""
    h = zeros_h(batch_size, hidden_size, dtype)
    return h, h


def hidden(state: State) -> Array:
    """h of a cell's state."""
    return state[0] if isinstance(state, tuple) else state


def with_hidden(state: State, h: Array) -> State:
    """The state with its h replaced."""
    return (h, *state[1:]) if isinstance(state, tuple) else h


def recurrent_split(params: dict[str, Array], gates: int, matmul_gates: int | None = None
                    ) -> tuple[Array, dict[str, Array]]:
    """(the columns of W_hh a step's matmul covers, what else its update reads: the cell's other recurrent
    params, and W_hh's remaining columns as `W_rest`)."""
    W = params["W_hh"]
    cut = W.shape[1] // gates * (matmul_gates or gates)
    others = {k: v for k, v in params.items() if k not in ("W_hh", "W_xh", "b_h")}
    return (W, others) if cut == W.shape[1] else (W[:, :cut], others | {"W_rest": W[:, cut:]})


def compute_dtype(dtype: Any) -> jnp.dtype:
    """The dtype a kernel computes in: float32 for bfloat16 or float32 data, float64 for float64."""
    return jnp.promote_types(dtype, jnp.float32)


def matmul(a: Array, b: Array, acc: Any) -> Array:
    """a @ b accumulated in `acc`, at the caller's `jax.default_matmul_precision` (read when traced: a
    kernel's jaxpr carries it, and Triton would otherwise take TF32 for every float32 matmul)."""
    p = jax.config.jax_default_matmul_precision
    return jnp.dot(a.astype(b.dtype), b, precision=None if p is None else lax.Precision(p), preferred_element_type=acc)


def dot(a: Array, b: Array) -> Array:
    """a @ b at the caller's matmul precision, for an `update` that multiplies by a weight itself."""
    return matmul(a, b, compute_dtype(b.dtype)).astype(jnp.promote_types(a.dtype, b.dtype))


def dW(h_prev_TxBxH: Array, d_TxBxN: Array) -> Array:
    """sum_t h_{t-1}^T d_t, [H, N], accumulated in at least float32: a recurrent weight's gradient as
    one matmul over all steps, from the states before each step and the gradients at its matmul's output."""
    return jnp.einsum("tbi,tbj->ij", h_prev_TxBxH, d_TxBxN, preferred_element_type=compute_dtype(d_TxBxN.dtype))
