"""The registry's cells (default tanh RNN, LSTM, GRU), 1 and 2 layers, at equal parameter counts on the seed's data.

Each model gets the hidden size that brings its parameter count closest to the budget without going
over (default: the one-layer tanh RNN at hidden 256), and all train alike: the seed's windows (10000
train, 5000 validation, 32 steps), Adam, global-norm clipping at 1, each with `--seeds` seeds trained as
one program (`jaxrnn.train(cfg, seeds=N)`). Prints a markdown table (cell, layers, hidden, parameters, the
final and best validation perplexity's mean ± std over the seeds and the final one's 95% interval,
training seconds) to stdout and, with `--plot`, draws every model's mean validation perplexity per epoch
with its band over the seeds. Progress goes to stderr. Run from the repo root:

    python experiments/compare_cells.py [--budget-hidden 256] [--epochs 20] [--lr 0.005] [--batch-size 256]
        [--impl scratch] [--seeds 5] [--plot cells.png] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import jax

import jaxrnn
from jaxrnn import cells
from jaxrnn.parallel import use_cpu_cores
from jaxrnn.plots import plot_curves
from jaxrnn.spread import Spread


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-hidden", type=int, default=256, help="the budget is a 1-layer tanh RNN of this width")
    p.add_argument("--cells", nargs="+", default=["rnn", "lstm", "gru"], choices=jaxrnn.config.CELLS)
    p.add_argument("--layers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.005, help="Adam's learning rate (default 0.005)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--impl", default="scratch", choices=["scratch", "flax"])
    p.add_argument("--seeds", type=int, default=5, help="seeds of each model, as one program (default 5)")
    p.add_argument("--plot", metavar="FILE", help="save the perplexity curves")
    p.add_argument("--json-out", metavar="FILE", help="also write the rows as JSON")
    return p.parse_args(argv)


def count_params(cfg: jaxrnn.Config, vocab_size: int) -> int:
    """Parameters of the model `cfg` names, from shapes only (nothing is initialised)."""
    shapes = jax.eval_shape(jaxrnn.build_model(cfg, vocab_size).init, jax.random.key(0))
    return sum(math.prod(a.shape) for a in jax.tree.leaves(shapes))


def hidden_for(cfg: jaxrnn.Config, vocab_size: int, budget: int) -> int:
    """The largest hidden size whose model has at most `budget` parameters (bisection: the count
    grows with the hidden size), a multiple of the sLSTM's heads (its width splits into them)."""
    step = int(cells.with_defaults(cfg.cell, cfg.cell_options or {}).get("heads", 1))

    def fits(k: int) -> bool:
        return count_params(cfg.replace(hidden=k * step), vocab_size) <= budget

    lo, hi = 1, 2
    while fits(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo * step


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use_cpu_cores(None, args.batch_size)  # as `jaxrnn train` does: one XLA device per CPU core
    try:
        base = jaxrnn.Config(impl=args.impl, epochs=args.epochs, lr=args.lr, optimizer="adam",
                             batch_size=args.batch_size, save_every=args.epochs)
        corpus = jaxrnn.corpus_for(base)
        V = len(corpus.vocab)
        budget = count_params(base.replace(hidden=args.budget_hidden), V)
        rows, histories = [], {}
        for layers in args.layers:
            for cell in args.cells:
                cfg = base.replace(cell=cell, layers=layers)
                cfg = cfg.replace(hidden=hidden_for(cfg, V, budget))
                name = f"{cell} x{layers}"
                print(f"training {name}: hidden {cfg.hidden}, {count_params(cfg, V)} parameters", file=sys.stderr)
                t0 = time.perf_counter()
                group = jaxrnn.train(cfg, corpus=corpus, seeds=args.seeds)
                seconds = time.perf_counter() - t0
                histories[name] = [t.history for t in group.replicas]  # drawn as the mean with its band
                best = Spread.of([min(r["val_ppl"] for r in t.history) for t in group.replicas])
                rows.append({"cell": cell, "layers": layers, "hidden": cfg.hidden, "params": count_params(cfg, V),
                             "val_ppl": group.summary()["val_ppl"], "best_val_ppl": best.to_dict(),
                             "seconds": seconds, "sample": group.median.predict("time traveller", 40)})
    except jaxrnn.JaxrnnError as e:
        print(f"jaxrnn: error: {e}", file=sys.stderr)
        return 2
    print(f"budget: {budget} parameters (1-layer tanh RNN, hidden {args.budget_hidden}); {args.impl} cells, "
          f"Adam lr {args.lr}, batch {args.batch_size}, {args.epochs} epochs, {args.seeds} seeds, "
          f"{jax.devices()[0].platform}")
    print("| cell | layers | hidden | params | best val ppl | final val ppl | final's 95% interval | seconds |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        final, best = Spread(**r["val_ppl"]), Spread(**r["best_val_ppl"])
        print(f"| {r['cell']} | {r['layers']} | {r['hidden']} | {r['params']:,} | {best.mean:.2f} ± {best.std:.2f} | "
              f"{final.mean:.2f} ± {final.std:.2f} | {final.lo:.2f}-{final.hi:.2f} | {r['seconds']:.1f} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=1)
    if args.plot:
        print(f"wrote {plot_curves(histories, args.plot, log_scale=True, splits=('val',))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
