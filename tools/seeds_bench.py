"""Many runs as one program against one process a run: `jaxrnn train --seeds N` (or, with `--grid`, `jaxrnn
sweep --grid ... --seeds N`) and the same runs as solo `jaxrnn train` processes one after another, in this one
command, on this machine; the wall-time ratio and the steady-state ratio of a record's seconds (group /
solo, against the replicas in the program); the JSON also holds every run's final val loss (solo runs by
point and seed, the program's by point directory and seed).

    python tools/seeds_bench.py                 # 8 seeds of the seed config (scratch, 100 epochs)
    python tools/seeds_bench.py --seeds 2 --epochs 5 --json-out seeds.json
    python tools/seeds_bench.py --seeds 4 --grid lr=6e-3,1.2e-2,2.4e-2 -- --preset shakespeare-cpu

Extra arguments after `--` go to every run (e.g. `-- --preset shakespeare-cpu`; `--epochs` is then passed
only if given). Each process starts, reads the corpus and compiles as a user's would; the record seconds are the
runs' own (`seconds` in metrics.jsonl, compilation excluded), their median after the first chunk.
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from toolcli import Parser, ToolError, positive_int, run_main


def jaxrnn(command: str, args: list[str]) -> float:
    """Wall seconds of one `jaxrnn COMMAND` process."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", "from jaxrnn.cli import entry; entry()", command, "--quiet",
                           "--no-curves", *args], capture_output=True, text=True)
    if proc.returncode:
        raise ToolError(f"jaxrnn {command} {' '.join(args)} failed: {proc.stderr.strip().splitlines()[-1]}; fix "
                        "it and run again")
    return time.perf_counter() - t0


def record_seconds(run_dir: Path) -> float:
    """The median seconds of a run's records after its first chunk (an epoch's, or a round's of steps)."""
    cfg = json.loads((run_dir / "config.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    skip = cfg["save_every"] if cfg.get("steps") is None else 1
    return statistics.median(r["seconds"] for r in records[skip:] or records)


def last_val_loss(run_dir: Path) -> float:
    """A run's final validation loss (its last record's)."""
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["val_loss"]


def parse_grid(specs: list[str]) -> list[dict[str, str]]:
    """`NAME=V1,V2` specs as every combination, each {flag: value}."""
    named = []
    for spec in specs:
        name, _, values = spec.partition("=")
        if not values:
            raise ToolError(f"--grid {spec!r} is not NAME=V1,V2,...; pass e.g. --grid lr=0.5,1,2")
        named.append([(name, v) for v in values.split(",")])
    return [dict(point) for point in itertools.product(*named)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    p = Parser(prog="seeds_bench.py", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=positive_int, default=8, help="replicas of each point (default 8)")
    p.add_argument("--epochs", type=positive_int, help="epochs of each run (default 100 without extra arguments, "
                   "else theirs)")
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="a sweep's grid (repeatable): the sweep against a solo process per point and seed")
    p.add_argument("--json-out", metavar="FILE", help="also write the figures as JSON")
    a = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    epochs = a.epochs or (None if extra else 100)
    flags = [*(["--epochs", str(epochs)] if epochs else []), *extra]
    grid = parse_grid(a.grid) if a.grid else [{}]
    runs = len(grid) * a.seeds
    if any(x == "--seed" or x.startswith("--seed=") for x in extra):
        raise ToolError("the runs use seeds 0 to N - 1; pass no --seed after --")
    seeds = str(a.seeds)  # counted from seed 0, as the solo runs' are
    with tempfile.TemporaryDirectory(prefix="jaxrnn-seeds-") as tmp:
        work = Path(tmp)
        solo_wall, solo_dirs = [], []
        for k, point in enumerate(grid):
            for seed in range(a.seeds):
                solo_dirs.append(work / f"solo-{k}-{seed}")
                settings = [x for name, v in point.items() for x in (f"--{name.replace('_', '-')}", v)]
                solo_wall.append(jaxrnn("train", [*flags, *settings, "--seed", str(seed), "--out", str(solo_dirs[-1])]))
        if a.grid:
            group_wall = jaxrnn("sweep", [*flags, *[f"--grid={g}" for g in a.grid], "--seeds", seeds, "--out",
                                          str(work / "sweep")])
            group_dir = work / "sweep" / "point-0" / "seed-0"
        else:
            group_wall = jaxrnn("train", [*flags, "--seeds", seeds, "--out", str(work / "group")])
            group_dir = work / "group" / "seed-0"
        solo_record = statistics.median(record_seconds(d) for d in solo_dirs)
        group_record = record_seconds(group_dir)
        solo_loss = [last_val_loss(d) for d in solo_dirs]
        replicas = [work / "sweep" / f"point-{k}" / f"seed-{s}" for k in range(len(grid)) for s in range(a.seeds)] \
            if a.grid else [work / "group" / f"seed-{s}" for s in range(a.seeds)]
        group_loss = [last_val_loss(d) for d in replicas]
    row = {"seeds": a.seeds, "grid": a.grid, "runs": runs, "flags": flags, "solo_wall_s": sum(solo_wall),
           "group_wall_s": group_wall, "wall_ratio": group_wall / sum(solo_wall), "solo_record_s": solo_record,
           "group_record_s": group_record, "record_ratio": group_record / solo_record,
           "solo_val_loss": solo_loss, "group_val_loss": group_loss}
    print("| runs | solo processes, wall | one program, wall | ratio | solo record | group record | group / solo "
          "record |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {runs} | {row['solo_wall_s']:.1f} s | {group_wall:.1f} s | {row['wall_ratio']:.2f} | "
          f"{solo_record * 1e3:.1f} ms | {group_record * 1e3:.1f} ms | {row['record_ratio']:.2f} |")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
