"""`jaxrnn export`: a trained run as files that decode without jaxrnn.

DIR/decoder.jaxexport is the greedy decoder as a serialized `jax.export` program (StableHLO, lowered for CPU
and CUDA): one call reads a chunk of `chunk` characters of one prompt, or of its own output, exactly as
the server's engine does (`engine.decode_chunk`), so a loop of calls warms up on any prompt and goes on
for any length. DIR/params.npz and DIR/state.npz hold its arguments (the params' leaves and the zero
state, in the program's order, named p0000... and s0000...), DIR/model.json the vocab, the prompt's
reading and what the run was. `docs/sample_exported.py` is such a loop with only jax and numpy.

For the chapters' cells (rnn, gru, lstm, either implementation) DIR/weights.npz holds the weights in one
layout (`weights`) and model.json's "weights" the equations that use them, which `docs/sample_numpy.py`
follows with numpy alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.engine import decode_chunk
from jaxrnn.errors import JaxrnnError
from jaxrnn.loop import Trained
from jaxrnn.models import layer_name

CHUNK = 16
PLATFORMS = ("cpu", "cuda")
FORMAT = "jaxrnn-export-1"
EQUATIONS = {  # of one layer; x: its input row, h (and c): its state; split(v, k): k equal parts of v's last axis
    "rnn": "h = tanh(x W_xh + h W_hh + b_h)",
    "lstm": "i, f, g, o = split(x W_xh + h W_hh + b_h, 4); c = sigmoid(f) c + sigmoid(i) tanh(g); "
            "h = sigmoid(o) tanh(c)",
    "gru": "x_r, x_z, x_n = split(x W_xh + b_h, 3); h_r, h_z, h_n = split(h W_hh, 3); r = sigmoid(x_r + h_r); "
           "z = sigmoid(x_z + h_z); h = (1 - z) tanh(x_n + r (h_n + b_hn)) + z h",
}
FLAX_GATES = {"lstm": "ifgo", "gru": "rzn"}  # Flax's names of the gates, in the order of the layout's blocks


def greedy_chunk(trained: Trained):
    """The run's greedy chunk as a function of flat arrays: (params' leaves, state's leaves, logits [1, V],
    forced [1, C], forced count [1]) -> (tokens [1, C], state's leaves, logits)."""
    model, params = trained.model, trained.params
    p_def = jax.tree.structure(params)
    s_def = jax.tree.structure(model.init_state(1))

    def chunk(p_leaves, s_leaves, logits, forced, count):
        zeros = jnp.zeros(1, jnp.uint32)
        toks, state, logits = decode_chunk(model, jax.tree.unflatten(p_def, p_leaves),
                                           jax.tree.unflatten(s_def, s_leaves), logits, forced, count, zeros, zeros,
                                           jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.float32),
                                           jnp.zeros(1, jnp.int32), jnp.ones(1, jnp.float32), sampled=False)
        return toks, jax.tree.leaves(state), logits

    return chunk


def _from_flax(cell: str, r: dict) -> dict[str, np.ndarray]:
    """A Flax layer's weights in the layout (Flax keeps a Dense per gate, and the LSTM's bias on the hidden
    side, the GRU's on the input side: the sums are what count)."""
    if cell == "rnn":
        return {"W_xh": r["i"]["kernel"], "W_hh": r["h"]["kernel"], "b_h": r["i"]["bias"]}
    gates = FLAX_GATES[cell]
    out = {"W_xh": np.concatenate([r[f"i{g}"]["kernel"] for g in gates], -1),
           "W_hh": np.concatenate([r[f"h{g}"]["kernel"] for g in gates], -1),
           "b_h": np.concatenate([r[f"{'h' if cell == 'lstm' else 'i'}{g}"]["bias"] for g in gates])}
    if cell == "gru":
        out["b_hn"] = r["hn"]["bias"]
    return out


def weights(trained: Trained) -> dict[str, np.ndarray] | None:
    """The params in one layout whatever the implementation (None for a cell outside `EQUATIONS`): layer i's
    `i.W_xh` [inputs, G*H], `i.W_hh` [H, G*H], `i.b_h` [G*H] (the GRU's also `i.b_hn` [H]), the embedding
    `E` [V, embed] if there is one, and the head's `W_hq` [H, V] (E^T when tied) and `b_q` [V]."""
    c, p = trained.cfg, jax.tree.map(np.asarray, trained.params)
    if c.cell not in EQUATIONS:
        return None
    out = {}
    for i in range(c.layers):
        r = _from_flax(c.cell, p[layer_name(i)]) if c.impl == "flax" else p[layer_name(i)]
        out.update({f"{i}.{k}": v for k, v in r.items()})
    if c.embed:
        out["E"] = p["embed"]["embedding" if c.impl == "flax" else "E"]
    if c.impl == "flax":
        out.update({"b_q": p["head_bias"]} if c.tie else {"W_hq": p["head"]["kernel"], "b_q": p["head"]["bias"]})
    else:
        out.update({k: v for k, v in p["head"].items()})
    return out


def export_run(trained: Trained, out: str | Path, platforms: tuple[str, ...] = PLATFORMS) -> Path:
    """Write `trained` as an export directory (see the module's docstring); returns it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise JaxrnnError(f"{out} is a file; pass --out with a directory to write")
    out.mkdir(parents=True, exist_ok=True)
    p_leaves = [np.asarray(a) for a in jax.tree.leaves(trained.params)]
    s_leaves = [np.asarray(a) for a in jax.tree.leaves(trained.model.init_state(1))]
    V = len(trained.vocab)
    specs = ([jax.ShapeDtypeStruct(a.shape, a.dtype) for a in p_leaves],
             [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in s_leaves],
             jax.ShapeDtypeStruct((1, V), jnp.float32), jax.ShapeDtypeStruct((1, CHUNK), jnp.int32),
             jax.ShapeDtypeStruct((1,), jnp.int32))
    with jax.default_matmul_precision(trained.cfg.precision):
        exported = jax.export.export(jax.jit(greedy_chunk(trained)), platforms=platforms)(*specs)
    (out / "decoder.jaxexport").write_bytes(exported.serialize())
    np.savez(out / "params.npz", **{f"p{i:04d}": a for i, a in enumerate(p_leaves)})
    np.savez(out / "state.npz", **{f"s{i:04d}": a for i, a in enumerate(s_leaves)})
    cfg = trained.cfg
    meta = {"format": FORMAT, "vocab": list(trained.vocab.idx_to_token), "unk": trained.vocab.unk,
            "preprocessing": cfg.preprocessing, "chunk": CHUNK, "prompt": trained.prompt, "platforms": list(platforms),
            "run": trained.run_dir.name if trained.run_dir else None, cfg.unit: trained.done, "cell": cfg.cell,
            "impl": cfg.impl, "layers": cfg.layers, "hidden": cfg.hidden, "jax": jax.__version__}
    layout = weights(trained)
    if layout is not None:
        np.savez(out / "weights.npz", **layout)
        meta["weights"] = {"cell": cfg.cell, "layers": cfg.layers, "hidden": cfg.hidden, "embed": cfg.embed,
                           "tie": cfg.tie, "shapes": {k: list(v.shape) for k, v in layout.items()},
                           "layer": EQUATIONS[cfg.cell],
                           "input": "x = E[token] with an embedding, else one_hot(token); each layer's h is "
                                    "the next one's x",
                           "head": "logits = h W_hq + b_q (W_hq = E^T when tied)"}
    (out / "model.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out
