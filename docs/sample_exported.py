"""Greedy text from a `jaxrnn export` directory, with only jax and numpy installed (no jaxrnn):

    python sample_exported.py EXPORT_DIR ['time traveller'] [50]

prints the prompt (read as the run's corpus was) and N generated characters, as `jaxrnn sample` does.
"""

import json
import re
import sys
from pathlib import Path

import numpy as np
from jax import export


def sample(d: Path | str, prompt: str | None = None, n: int = 50) -> str:
    d = Path(d)
    meta = json.loads((d / "model.json").read_text())
    decoder = export.deserialize(bytearray((d / "decoder.jaxexport").read_bytes()))
    with np.load(d / "params.npz") as p, np.load(d / "state.npz") as s:
        params, state = [p[k] for k in sorted(p.files)], [s[k] for k in sorted(s.files)]
    vocab, C = meta["vocab"], meta["chunk"]
    prompt = meta["prompt"] if prompt is None else prompt
    if meta["preprocessing"] == "d2l":  # runs of non-letters become one space, then lower case
        prompt = re.sub("[^A-Za-z]+", " ", prompt).lower()
    index = {t: i for i, t in enumerate(vocab)}
    ids = [index.get(c, meta["unk"]) for c in prompt]
    logits, made, fed = np.zeros((1, len(vocab)), np.float32), [], 0
    while len(made) < n:  # each call: the prompt's next chunk, or (once it is read) characters of its own
        part = ids[fed: fed + C]
        forced = np.zeros((1, C), np.int32)
        forced[0, : len(part)] = part
        toks, state, logits = decoder.call(params, state, logits, forced, np.array([len(part)], np.int32))
        made += [int(t) for t in np.asarray(toks)[0, len(part):]]
        fed += len(part)
    return prompt + "".join(vocab[t] for t in made[:n])


if __name__ == "__main__":
    args = sys.argv[1:]
    print(sample(Path(args[0]), args[1] if len(args) > 1 else None, int(args[2]) if len(args) > 2 else 50))
