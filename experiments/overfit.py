"""d2l's exercise: make the concise RNN overfit, and see dropout hold it back.

A large concise model (`nn.scan` over `nn.SimpleCell`) trains with Adam on a small slice of The Time
Machine, so training perplexity keeps falling while validation perplexity turns and rises. With
`--dropout P` a second model, the same but for dropout, trains alongside for comparison. Prints, per
model, the best validation epoch and whether validation rose after it; `--plot` draws both curves.
Results go to stdout, progress to stderr. Run from the repo root:

    JAXRNN_DATA_DIR=DIR_WITH_timemachine.txt python experiments/overfit.py [--hidden 256] [--num-train 5000]
        [--epochs 30] [--lr 0.003] [--dropout 0.3] [--plot overfit.png]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import jaxrnn
from jaxrnn.plots import plot_curves


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256, help="hidden units (default 256)")
    p.add_argument("--num-train", type=int, default=5000, help="training windows (default 5000, half of d2l's)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.003, help="Adam's learning rate (default 0.003)")
    p.add_argument("--dropout", type=float, default=0.0, help="also train the model with this dropout (0: do not)")
    p.add_argument("--plot", metavar="FILE", help="save the perplexity curves")
    return p.parse_args(argv)


def summary(name: str, history: list[dict[str, Any]]) -> str:
    """One line: where validation perplexity was best, where both ended, and whether it overfit."""
    best = min(history, key=lambda r: r["val_ppl"])
    last = history[-1]
    rose = last["val_ppl"] > best["val_ppl"] * 1.02 and last["train_ppl"] < best["train_ppl"]
    return (f"{name}: best val ppl {best['val_ppl']:.2f} at epoch {best['epoch']} (train {best['train_ppl']:.2f}); "
            f"epoch {last['epoch']}: train {last['train_ppl']:.2f}, val {last['val_ppl']:.2f}; "
            f"overfit: {'yes' if rose else 'no'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        base = jaxrnn.Config(model="concise", hidden=args.hidden, num_train=args.num_train, epochs=args.epochs,
                             optimizer="adam", lr=args.lr, batch_size=250, save_every=args.epochs)
        runs = {"no dropout": base}
        if args.dropout:
            runs[f"dropout {args.dropout}"] = base.replace(dropout=args.dropout)
        corpus = jaxrnn.corpus_for(base)
        histories = {}
        for name, cfg in runs.items():
            print(f"training the concise model, {name}: hidden {cfg.hidden}, {cfg.num_train} windows", file=sys.stderr)
            histories[name] = jaxrnn.train(cfg, corpus=corpus).history
            print(summary(name, histories[name]), flush=True)
        if args.plot:
            print(f"wrote {plot_curves(histories, args.plot, log_scale=True)}", file=sys.stderr)
    except jaxrnn.JaxrnnError as e:
        print(f"jaxrnn: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
