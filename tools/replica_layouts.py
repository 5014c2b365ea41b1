"""How R replicas of the seed config are best laid out on this machine's devices, measured in one process:
one solo run (data-parallel over the devices, as `jaxrnn train` runs), `vmap` over the replicas with each
replica data-parallel, `vmap` with the replicas split over the devices, and the replicas split over the
devices with each device training its share one after another (`lax.map`, what `--seeds` runs:
`steps.Steps.for_replicas`). Seconds per epoch per replica, steady state (compilation excluded). Then the
memory of the `--seeds` program by replicas (XLA's analysis of the compiled chunk, per device): what its
arguments hold (the tokens once, each replica's state and plans) and its temporaries.

    python tools/replica_layouts.py             # 8 replicas, 5 epochs, on one device per core
"""

from __future__ import annotations

import dataclasses
import sys
import time

from toolcli import Parser, positive_int, run_main


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="replica_layouts.py", description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=positive_int, default=8, help="replicas (default 8; padded to a multiple of the "
                   "devices, as --seeds pads them)")
    p.add_argument("--epochs", type=positive_int, default=5, help="epochs of one compiled chunk (default 5)")
    a = p.parse_args(argv)
    from jaxrnn import parallel

    parallel.use_cpu_cores(None, 1024)  # before JAX starts: one CPU device per core, as the CLI
    import jax
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import jaxrnn
    from jaxrnn.batching import chunk_plan, eval_plan, eval_sample, steps_per_epoch
    from jaxrnn.models import build_model
    from jaxrnn.parallel import AXIS, layout, put_tree
    from jaxrnn.replicas import Replicas
    from jaxrnn.steps import Steps, init_state
    from jaxrnn.training import make_optimizer

    R, E, cfg = a.replicas, a.epochs, jaxrnn.Config()
    corpus = jaxrnn.corpus_for(cfg)
    model = build_model(cfg, len(corpus.vocab))
    n = corpus.spans["train"][1]
    tx = make_optimizer(cfg, steps_per_epoch(cfg.batching, n, cfg.batch_size, cfg.num_steps))
    lay = layout(None, cfg.batch_size)
    steps = Steps(model, tx, cfg.num_steps)
    train, val = corpus.part_tokens("train"), corpus.part_tokens("val")
    val_plan = eval_sample(eval_plan("windows", corpus.spans["val"][1], cfg.batch_size, cfg.num_steps), None, 0,
                           "windows")
    group = Replicas.of(tuple(cfg.replace(seed=s) for s in range(R)), lay)

    def timed(fn, args) -> float:  # seconds an epoch of the second call (the first compiles and warms)
        compiled = fn.lower(*args).compile()
        out = jax.block_until_ready(compiled(*args))
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(out[0], *args[1:]))
        return (time.perf_counter() - t0) / E

    plan = chunk_plan(0, 0, E, n, cfg.batch_size, cfg.batching, cfg.num_steps)
    solo = timed(steps.jitted(lay).chunk, (put_tree(init_state(model, tx, 0), lay.replicated),
                                          *put_tree((np.int32(0), train, val), lay.replicated),
                                          *put_tree(plan, lay.batched(3)), *put_tree(val_plan, lay.batched(2))))
    states = init_state(model, tx, tuple(c.seed for c in group.padded))
    seeds = group.knobs()
    plans = group.stacked(lambda c: chunk_plan(c.seed, 0, E, n, cfg.batch_size, cfg.batching, cfg.num_steps))
    vals = group.stacked(lambda c: val_plan)
    rep, by_replica = lay.replicated, group.by_replica
    args = (states, seeds, train, val, *plans, *vals)
    rows = {"solo, data-parallel": solo}
    batched = [NamedSharding(lay.mesh, P(*[None] * k, AXIS)) for k in (3, 3, 2, 2)]
    dp = jax.jit(jax.vmap(dataclasses.replace(steps, mesh=lay.mesh).chunk, in_axes=(0, 0, None, None, 0, 0, 0, 0)),
                 in_shardings=(rep, rep, rep, rep, *batched))
    padded = len(group.padded)
    rows["vmap, each replica data-parallel"] = timed(dp, args) / padded
    split = jax.jit(jax.vmap(steps.chunk, in_axes=(0, 0, None, None, 0, 0, 0, 0)),
                    in_shardings=(by_replica, by_replica, rep, rep, *[by_replica] * 4))
    rows["vmap, replicas split over the devices"] = timed(split, args) / padded
    rows["lax.map, replicas split over the devices (--seeds)"] = timed(steps.for_replicas(lay).chunk, args) / padded
    print(f"{R} replicas of the seed config on {lay.devices} {jax.devices()[0].platform} devices, {E} epochs a chunk")
    print("| layout | s/epoch per replica | x solo |\n| --- | ---: | ---: |")
    for name, s in rows.items():
        print(f"| {name} | {s:.3f} | {s / solo:.2f} |")
    tokens = train.nbytes + val.nbytes
    own = sum(x.nbytes for x in jax.tree.leaves((states, seeds, plans, vals))) // padded  # one replica's arrays
    print(f"\nthe tokens: {tokens:,} bytes; one replica's state, seed and plans: {own:,} bytes")
    print("| replicas | per device | arguments | temporaries | tokens + own arrays of its replicas |\n"
          "| ---: | ---: | ---: | ---: | ---: |")
    for r in sorted({lay.devices * 2 ** i for i in range(8) if lay.devices * 2 ** i <= padded}):
        few = jax.tree.map(lambda x, r=r: x[:r], (states, seeds, plans, vals))
        mem = steps.for_replicas(lay).chunk.lower(few[0], few[1], train, val, *few[2], *few[3]).compile() \
            .memory_analysis()
        each = r // lay.devices
        print(f"| {r} | {each} | {mem.argument_size_in_bytes:,} | {mem.temp_size_in_bytes:,} | "
              f"{tokens + each * own:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
