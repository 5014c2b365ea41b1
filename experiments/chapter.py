"""What both chapter scripts share: their flags, the data and model they start from, and the
training run that ends each chapter (one line per epoch, the final perplexity and text)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import jaxrnn
from jaxrnn.plots import plot_curves


def parse_args(doc: str, argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--epochs", type=int, help="training epochs (default: the seed config's 100)")
    p.add_argument("--hidden", type=int, help="hidden units (default: the seed config's 32)")
    p.add_argument("--per-step", action="store_true", help="the chapter's loop: one jitted call per batch")
    p.add_argument("--out", metavar="RUN_DIR", help="also write a run directory (config, metrics, checkpoints)")
    p.add_argument("--force", action="store_true", help="overwrite the run directory if it holds a run")
    p.add_argument("--plot", metavar="FILE", help="save the perplexity curves")
    return p.parse_args(argv)


def fail(e: jaxrnn.JaxrnnError) -> None:
    """Exit as the CLI does on bad input: one line, status 2."""
    print(f"jaxrnn: error: {e}", file=sys.stderr)
    sys.exit(2)


def setup(model: str, args: argparse.Namespace) -> tuple[jaxrnn.Config, jaxrnn.Corpus]:
    """The seed config for `model` with the flags applied, and its corpus."""
    try:
        given = {"epochs": args.epochs, "hidden": args.hidden}
        cfg = jaxrnn.Config(model=model, **{k: v for k, v in given.items() if v is not None})
        return cfg, jaxrnn.corpus_for(cfg)
    except jaxrnn.JaxrnnError as e:
        fail(e)
        raise


def train_and_report(cfg: jaxrnn.Config, corpus: jaxrnn.Corpus, args: argparse.Namespace) -> None:
    """Train as the chapter does, printing each epoch's perplexities, then the final ones and text."""

    def progress(r: dict[str, Any]) -> None:
        print(f"epoch {r['epoch']}, train_ppl {r['train_ppl']:.2f}, val_ppl {r['val_ppl']:.2f}", flush=True)

    print(f"training {cfg.name} for {cfg.epochs} epochs ({'per-step' if args.per_step else 'fused'})", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        trained = jaxrnn.train(cfg, args.out, corpus=corpus, per_step=args.per_step, force=args.force,
                               progress=progress)
    except jaxrnn.JaxrnnError as e:
        fail(e)
    print(f"trained in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(f"perplexity {trained.val_ppl:.1f}")
    print(repr(trained.predict("time traveller", 20)))
    if args.plot:
        try:
            print(f"wrote {plot_curves({'': trained.history}, args.plot)}", file=sys.stderr)
        except jaxrnn.JaxrnnError as e:
            print(f"jaxrnn: warning: {e}", file=sys.stderr)
