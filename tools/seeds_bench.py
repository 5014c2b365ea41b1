"""Many seeds as one program against one process a seed: `jaxrnn train --seeds N` and N solo `jaxrnn train
--seed K` processes run one after another, in this one command, on this machine; the wall-time ratio and the
steady-state epoch ratio (group epoch / solo epoch, against N).

    python tools/seeds_bench.py                 # 8 seeds of the seed config (scratch, 100 epochs)
    python tools/seeds_bench.py --seeds 2 --epochs 5 --json-out seeds.json

Extra arguments after `--` go to every `jaxrnn train` (e.g. `-- --preset shakespeare-cpu`). Each process
starts, reads the corpus and compiles as a user's would; the epoch seconds are the runs' own records
(`seconds` in metrics.jsonl, compilation excluded), their median over the epochs after the first chunk.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from toolcli import Parser, ToolError, positive_int, run_main


def train(args: list[str]) -> float:
    """Wall seconds of one `jaxrnn train` process."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", "from jaxrnn.cli import entry; entry()", "train", "--quiet",
                           "--no-curves", *args], capture_output=True, text=True)
    if proc.returncode:
        raise ToolError(f"jaxrnn train {' '.join(args)} failed: {proc.stderr.strip().splitlines()[-1]}; fix it and "
                        "run again")
    return time.perf_counter() - t0


def epoch_seconds(run_dir: Path, skip: int) -> float:
    """The median seconds of a run's records after the first `skip` (the first chunk's)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["seconds"] for r in records[skip:] or records)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    p = Parser(prog="seeds_bench.py", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=positive_int, default=8, help="replicas (default 8)")
    p.add_argument("--epochs", type=positive_int, default=100, help="epochs of each run (default 100)")
    p.add_argument("--json-out", metavar="FILE", help="also write the figures as JSON")
    a = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    flags = ["--epochs", str(a.epochs), *extra]
    with tempfile.TemporaryDirectory(prefix="jaxrnn-seeds-") as tmp:
        work = Path(tmp)
        solo_wall = [train([*flags, "--seed", str(k), "--out", str(work / f"solo-{k}")]) for k in range(a.seeds)]
        group_wall = train([*flags, "--seeds", str(a.seeds), "--out", str(work / "group")])
        save_every = json.loads((work / "solo-0" / "config.json").read_text())["save_every"]
        solo_epoch = statistics.median(epoch_seconds(work / f"solo-{k}", save_every) for k in range(a.seeds))
        group_epoch = epoch_seconds(work / "group" / "seed-0", save_every)
    row = {"seeds": a.seeds, "epochs": a.epochs, "extra": extra, "solo_wall_s": sum(solo_wall),
           "group_wall_s": group_wall, "wall_ratio": group_wall / sum(solo_wall), "solo_epoch_s": solo_epoch,
           "group_epoch_s": group_epoch, "epoch_ratio": group_epoch / solo_epoch}
    print(f"| seeds | solo processes, wall | --seeds {a.seeds}, wall | ratio | solo epoch | group epoch | group / solo "
          "epoch |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {a.seeds} | {row['solo_wall_s']:.1f} s | {group_wall:.1f} s | {row['wall_ratio']:.2f} | "
          f"{solo_epoch * 1e3:.1f} ms | {group_epoch * 1e3:.1f} ms | {row['epoch_ratio']:.2f} |")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
