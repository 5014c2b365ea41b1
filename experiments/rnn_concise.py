"""d2l 1.0 section 9.6, "Concise Implementation of Recurrent Neural Networks", on jaxrnn.

The same language model as section 9.5 built from Flax's high-level pieces (`nn.scan` over
`nn.SimpleCell`, an `nn.Dense` head). Prints what the chapter shows, in its order: the untrained
model's (random) text, one line of perplexities per epoch, then the final perplexity and text.
Results go to stdout, progress notes to stderr. Run from the repo root:

    JAXRNN_DATA_DIR=DIR_WITH_timemachine.txt python experiments/rnn_concise.py [--epochs 100] [--hidden 32]
        [--per-step] [--out RUN_DIR [--force]] [--plot ppl.png]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import jax

import jaxrnn
from jaxrnn.plots import plot_curves
from jaxrnn.sample import predict



def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, help="training epochs (default: the seed config's 100)")
    p.add_argument("--hidden", type=int, help="hidden units (default: the seed config's 32)")
    p.add_argument("--per-step", action="store_true", help="the chapter's loop: one jitted call per batch")
    p.add_argument("--out", metavar="RUN_DIR", help="also write a run directory (config, metrics, checkpoints)")
    p.add_argument("--force", action="store_true", help="overwrite the run directory if it holds a run")
    p.add_argument("--plot", metavar="FILE", help="save the perplexity curves (needs matplotlib)")
    args = p.parse_args(argv)
    try:
        given = {"epochs": args.epochs, "hidden": args.hidden}
        cfg = jaxrnn.Config(model="concise", **{k: v for k, v in given.items() if v is not None})
        corpus = jaxrnn.load_corpus(cfg.data, cfg.num_steps, cfg.num_train, cfg.num_val)
    except jaxrnn.JaxrnnError as e:
        p.exit(2, f"jaxrnn: error: {e}\n")
    model = jaxrnn.build_model(cfg, len(corpus.vocab))

    # Before training the model predicts random text (it starts from the same init that training uses).
    params = jax.jit(model.init)(jax.random.key(cfg.seed))
    print(repr(predict(model, params, corpus.vocab, "it has", 20)))

    def progress(r: dict[str, Any]) -> None:
        print(f"epoch {r['epoch']}, train_ppl {r['train_ppl']:.2f}, val_ppl {r['val_ppl']:.2f}", flush=True)

    print(f"training {cfg.model} for {cfg.epochs} epochs ({'per-step' if args.per_step else 'fused'})", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        trained = jaxrnn.train(cfg, args.out, corpus=corpus, per_step=args.per_step, force=args.force,
                               progress=progress)
    except jaxrnn.JaxrnnError as e:
        p.exit(2, f"jaxrnn: error: {e}\n")
    print(f"trained in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(f"perplexity {trained.history[-1]['val_ppl']:.1f}")
    print(repr(trained.predict("time traveller", 20)))
    if args.plot:
        try:
            print(f"wrote {plot_curves({'': trained.history}, args.plot)}", file=sys.stderr)
        except jaxrnn.JaxrnnError as e:
            print(f"jaxrnn: warning: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
