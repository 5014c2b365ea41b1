"""d2l 1.0 section 9.6, "Concise Implementation of Recurrent Neural Networks", on jaxrnn.

The same language model as section 9.5 built from Flax's high-level pieces (`nn.scan` over
`nn.SimpleCell`, an `nn.Dense` head). Prints what the chapter shows, in its order: the untrained
model's (random) text, one line of perplexities per epoch, then the final perplexity and text.
Results go to stdout, progress notes to stderr. Run from the repo root:

    JAXRNN_DATA_DIR=DIR_WITH_timemachine.txt python experiments/rnn_concise.py [--epochs 100] [--hidden 32]
        [--per-step] [--out RUN_DIR [--force]] [--plot ppl.png]
"""

from __future__ import annotations

import sys

import chapter
import jax

import jaxrnn
from jaxrnn.sample import predict


def main(argv: list[str] | None = None) -> int:
    args = chapter.parse_args(__doc__, argv)
    cfg, corpus = chapter.setup("concise", args)
    model = jaxrnn.build_model(cfg, len(corpus.vocab))

    # Before training the model predicts random text (it starts from the same init that training uses).
    params = jax.jit(model.init)(jax.random.key(cfg.seed))
    print(repr(predict(model, params, corpus.vocab, "it has", 20)))

    chapter.train_and_report(cfg, corpus, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
