"""Measure what each knob buys: train tokens/s of the fused path over a grid of unroll, matmul
precision, compute dtype and device count, for the seed shape and the large shape, in one process.

usage: python tools/ablate.py [--shape seed|large] [--models scratch concise] [--cells rnn lstm gru] [--unroll 1 8 32]
       [--precision highest default] [--dtype float32 bfloat16] [--devices 1 2] [--epochs N] [--json-out FILE]
"""

import argparse
import itertools
import json
import sys

import jax

from jaxrnn.bench import case_configs, table
from jaxrnn.bench_impls import jaxrnn_train
from jaxrnn.data import load_corpus
from jaxrnn.parallel import use_cpu_cores


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=["seed", "large"], default="seed")
    p.add_argument("--models", nargs="+", default=["scratch", "concise"], help="scratch or concise (Flax) impls")
    p.add_argument("--cells", nargs="+", default=["rnn"])
    p.add_argument("--unroll", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--precision", nargs="+", default=["highest", "default"])
    p.add_argument("--dtype", nargs="+", default=["float32"])
    p.add_argument("--devices", nargs="+", type=int, default=[0], help="mesh sizes (0: every local device)")
    p.add_argument("--epochs", type=int, help="override the case's epochs")
    p.add_argument("--json-out")
    a = p.parse_args()
    case = "seed-train" if a.shape == "seed" else "large-train"
    use_cpu_cores(None, 64)  # as `jaxrnn train` and `jaxrnn bench` do
    base, _ = case_configs(case, quick=False, on_gpu=jax.default_backend() == "gpu")
    if a.epochs:
        base = base.replace(epochs=a.epochs)
    corpus = load_corpus(None, base.num_steps, 10000, 5000)
    if case == "large-train":
        corpus = corpus.head(base.num_train, base.num_val)
    rows = []
    grid = itertools.product(a.models, a.cells, a.unroll, a.precision, a.dtype, a.devices)
    for model, cell, unroll, precision, dtype, devices in grid:
        cfg = base.replace(model=model, unroll=unroll, precision=precision, dtype=dtype, devices=devices or None)
        cfg = cfg.replace(cell=cell, impl=cfg.impl)
        label = f"{model} u{unroll} {precision[:4]} {dtype[:4]}" + (f" d{devices}" if devices else "")
        r = jaxrnn_train(case, label, cfg, corpus)
        print(json.dumps(r), file=sys.stderr, flush=True)
        rows.append(r)
    print(table(rows))
    if a.json_out:
        json.dump(rows, open(a.json_out, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
