"""`python sample_numpy.py EXPORT_DIR ['time traveller'] [50]`: `jaxrnn sample`'s greedy text from `jaxrnn
export`'s weights.npz, by the equations its model.json names (rnn, gru, lstm), in float64 numpy alone."""

import json
import re
import sys
from pathlib import Path

import numpy as np


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def layer(cell: str, w: dict, x, state: tuple) -> tuple:
    """One step of one layer (model.json's "weights"/"layer"): its new state, h first."""
    h = state[0]
    if cell == "rnn":
        return (np.tanh(x @ w["W_xh"] + h @ w["W_hh"] + w["b_h"]),)
    if cell == "lstm":
        i, f, g, o = np.split(x @ w["W_xh"] + h @ w["W_hh"] + w["b_h"], 4)
        c = sigmoid(f) * state[1] + sigmoid(i) * np.tanh(g)
        return sigmoid(o) * np.tanh(c), c
    (x_r, x_z, x_n), (h_r, h_z, h_n) = np.split(x @ w["W_xh"] + w["b_h"], 3), np.split(h @ w["W_hh"], 3)
    r, z = sigmoid(x_r + h_r), sigmoid(x_z + h_z)
    return ((1 - z) * np.tanh(x_n + r * (h_n + w["b_hn"])) + z * h,)


def sample(d, prompt: str | None = None, n: int = 50) -> str:
    meta = json.loads((Path(d) / "model.json").read_text())
    m, vocab = meta["weights"], meta["vocab"]
    w = {k: v.astype(np.float64) for k, v in np.load(Path(d) / "weights.npz").items()}
    layers = [{k.split(".")[1]: v for k, v in w.items() if k.startswith(f"{i}.")} for i in range(m["layers"])]
    states = [(np.zeros(m["hidden"]),) * (2 if m["cell"] == "lstm" else 1) for _ in layers]
    W_hq = w["E"].T if m["tie"] else w["W_hq"]

    def forward(token: int):
        x = w["E"][token] if m["embed"] else np.eye(len(vocab))[token]
        for i, lw in enumerate(layers):
            states[i] = layer(m["cell"], lw, x, states[i])
            x = states[i][0]
        return x @ W_hq + w["b_q"]

    prompt = meta["prompt"] if prompt is None else prompt
    if meta["preprocessing"] == "d2l":  # runs of non-letters become one space, then lower case
        prompt = re.sub("[^A-Za-z]+", " ", prompt).lower()
    index, made = {t: i for i, t in enumerate(vocab)}, []
    for c in prompt:
        logits = forward(index.get(c, meta["unk"]))
    for _ in range(n):
        made.append(int(np.argmax(logits)))
        logits = forward(made[-1])
    return prompt + "".join(vocab[t] for t in made)


if __name__ == "__main__":
    args = sys.argv[1:]
    print(sample(args[0], args[1] if len(args) > 1 else None, int(args[2]) if len(args) > 2 else 50))
