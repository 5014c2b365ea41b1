"""How good jaxrnn's budget (jaxrnn/budget.py) is, on this machine: its memory estimate against XLA's own
memory analysis of the compiled training chunk, and its program-size estimate against the lowered
program's size and XLA's compile time. One JSON line per case on stdout; docs/benchmarks.md has the figures.

    python tools/budget_report.py memory            # the estimate / XLA ratio for a few models
    python tools/budget_report.py compile 1 16 64   # operations and compile seconds by depth
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from toolcli import Parser, ToolError, run_main

MEMORY_CASES = [  # the models the estimate was checked on (one CPU device, window 32 unless given)
    dict(batch_size=65536), dict(hidden=1024),
    dict(cell="lstm", hidden=512, layers=2, batch_size=256, num_steps=64),
    dict(cell="gru", impl="flax", hidden=256, batch_size=4096, num_steps=64, optimizer="adam"),
    dict(cell="lstm", impl="flax", hidden=128, batch_size=2048, embed=64),
    dict(cell="mingru", hidden=256, layers=2, batch_size=2048),
]


def lowered_chunk(changes: dict[str, Any]) -> tuple[Any, Any]:
    """(the budget's Needs, the lowered training chunk) of the seed config with `changes`, on one device,
    The Time Machine windowed for it; nothing is run, only shapes."""
    import jax
    import numpy as np

    from jaxrnn import budget
    from jaxrnn.batching import chunk_plan, eval_plan, steps_per_epoch
    from jaxrnn.config import Config
    from jaxrnn.models import build_model
    from jaxrnn.run import corpus_for
    from jaxrnn.steps import Steps, init_state
    from jaxrnn.training import check_trainable, make_optimizer

    cfg = Config(**{"epochs": 1, "save_every": 1, "devices": 1, **changes})
    corpus = corpus_for(cfg)
    model = build_model(cfg, len(corpus.vocab))
    lay = check_trainable(cfg, corpus, model)
    tx = make_optimizer(cfg)
    state = jax.eval_shape(lambda: init_state(model, tx, cfg.seed))
    n, n_val, T = corpus.spans["train"][1], corpus.spans["val"][1], cfg.num_steps

    def spec(x: Any, sharding: Any) -> Any:
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    args = (jax.tree.map(lambda x: spec(x, lay.replicated), state), spec(np.int32(0), lay.replicated),
            spec(corpus.part_tokens("train"), lay.replicated),
            spec(corpus.part_tokens("val"), lay.replicated),
            *(spec(x, lay.batched(3)) for x in chunk_plan(0, 0, 1, n, cfg.batch_size, "random", T)),
            *(spec(x, lay.batched(2)) for x in eval_plan("d2l-windows", n_val, cfg.batch_size, T)))
    need = budget.needs(cfg, len(corpus.vocab), budget.tree_bytes(state), budget.tree_bytes(state.params), 1, 1, True,
                        n, n_val, len(corpus.tokens), corpus.tokens.itemsize,
                        steps_per_epoch("random", n, cfg.batch_size, T))
    with jax.default_matmul_precision(cfg.precision):
        return need, Steps(model, tx, T).jitted(lay).chunk.lower(*args)


def xla_bytes(compiled: Any) -> int:
    """What XLA's memory analysis says a compiled program holds at once: temporaries, arguments, outputs."""
    m = compiled.memory_analysis()
    return m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes


def memory(changes: dict[str, Any]) -> dict[str, Any]:
    need, lowered = lowered_chunk(changes)
    xla = xla_bytes(lowered.compile())
    return {"case": changes, "estimate_bytes": need.total, "xla_bytes": xla, "ratio": round(need.total / xla, 3)}


def compile_time(layers: int) -> dict[str, Any]:
    """The tanh RNN of hidden 16 at `layers` deep: the estimated and the lowered program's size, and how long
    XLA took to compile it (with no cache)."""
    from jaxrnn import budget

    changes = dict(layers=layers, hidden=16, num_train=512, num_val=256, batch_size=128)
    t0 = time.perf_counter()
    _, lowered = lowered_chunk(changes)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    return {"layers": layers, "estimated_ops": budget.program_ops(layers, 32), "hlo_lines": lowered.as_text().count(
        "\n"), "lower_s": round(t1 - t0, 2), "compile_s": round(t2 - t1, 2)}


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="budget_report.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    sub.add_parser("memory", help="the memory estimate against XLA's memory analysis")
    c = sub.add_parser("compile", help="program size and compile time by depth")
    c.add_argument("layers", nargs="+", type=int, help="depths to compile")
    args = p.parse_args(argv)
    import jax

    jax.config.update("jax_enable_compilation_cache", False)  # compile times are XLA's, not a cache's
    if any(n < 1 for n in getattr(args, "layers", [])):
        raise ToolError("a depth must be at least 1; pass positive layer counts")
    rows = [memory(c) for c in MEMORY_CASES] if args.what == "memory" else [compile_time(n) for n in args.layers]
    for row in rows:
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
