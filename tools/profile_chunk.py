"""Profile one compiled chunk of training and summarise where device time goes.

Runs `--epochs` epochs of a config (the seed config by default) as one fused chunk under
`jax.profiler.trace`, then reads the Perfetto trace it writes and prints the kernels by total time,
how many kernels one optimizer step launches, and the busy fraction of the device.

usage: python tools/profile_chunk.py [--model scratch|concise] [--hidden 32 --batch-size 1024 --num-steps 32]
       [--epochs 2] [--out DIR]
"""

import argparse
import collections
import gzip
import json
import sys
import tempfile
from pathlib import Path

import jax

from jaxrnn.config import Config
from jaxrnn.data import load_corpus
from jaxrnn.models import build_model
from jaxrnn.training import fit


def kernel_events(trace_dir: Path) -> list[dict]:
    """Complete ('X') events of device streams from the Perfetto trace jax wrote."""
    files = sorted(trace_dir.rglob("perfetto_trace.json.gz"))
    if not files:
        sys.exit(f"no perfetto trace under {trace_dir}")
    trace = json.load(gzip.open(files[-1]))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    names = {(e.get("pid"), e.get("tid")): e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
    pids = {e.get("pid"): e.get("args", {}).get("name", "") for e in events
            if e.get("ph") == "M" and e.get("name") == "process_name"}
    device = [e for e in events if e.get("ph") == "X" and "dur" in e
              and ("/device:" in pids.get(e.get("pid"), "") or "Stream" in names.get((e.get("pid"), e.get("tid")), ""))]
    if not device:
        print(f"no device events; processes in the trace: {sorted(set(pids.values()))[:10]}", file=sys.stderr)
    return device


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="scratch")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--num-steps", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--kernel", default="auto", help="scan or pallas (jaxrnn train --kernel)")
    p.add_argument("--out", help="keep the trace here")
    a = p.parse_args()
    cfg = Config(model=a.model, hidden=a.hidden, batch_size=a.batch_size, num_steps=a.num_steps,
                 epochs=a.epochs, save_every=a.epochs, kernel=a.kernel)
    corpus = load_corpus(None, cfg.num_steps, cfg.num_train, cfg.num_val)
    model = build_model(cfg, len(corpus.vocab))
    fit(cfg.replace(epochs=1, save_every=1), corpus, model)  # warm: allocator, autotuning
    trace_dir = Path(a.out or tempfile.mkdtemp())
    timings: dict[str, float] = {}
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        fit(cfg, corpus, model, timings=timings)
    events = kernel_events(trace_dir)
    steps = cfg.epochs * -(-len(corpus.train) // cfg.batch_size)
    by_name: dict[str, list[float]] = collections.defaultdict(list)
    for e in events:
        by_name[e["name"]].append(e["dur"])
    busy_us = sum(e["dur"] for e in events)
    span_us = (max(e["ts"] + e["dur"] for e in events) - min(e["ts"] for e in events)) if events else 0
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}); {cfg.name} hidden {cfg.hidden} "
          f"batch {cfg.batch_size} steps {cfg.num_steps}; {cfg.epochs} epochs = {steps} optimizer steps")
    print(f"chunk wall {timings['train_s']:.3f} s; {len(events)} device events, {len(events) / steps:.0f} per "
          f"optimizer step; device busy {busy_us / 1e6:.3f} s of a {span_us / 1e6:.3f} s span "
          f"({100 * busy_us / max(span_us, 1):.0f}%); mean event {busy_us / max(len(events), 1):.1f} us")
    print(f"{'total ms':>9} {'count':>7} {'mean us':>8}  kernel")
    for name, durs in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:15]:
        print(f"{sum(durs) / 1e3:9.1f} {len(durs):7d} {sum(durs) / len(durs):8.1f}  {name[:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
