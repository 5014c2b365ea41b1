"""Time `jaxrnn train` against d2l's own JAX code at the seed config, as whole processes, one after another.

usage: python tools/seed_vs_d2l.py [--models scratch,concise] [--epochs 100] [--repeats 1] [--json-out FILE]

For each model it runs, in this order, and times the wall clock of each process:

1. `python tools/d2l_baseline.py train MODEL`: d2l 1.0.3's chapter code (see that file);
2. `jaxrnn train --model MODEL` with an empty compile cache: a fresh private $XDG_CACHE_HOME, so every
   program compiles (and is written to that cache, as on a user's first run);
3. the same command again with that cache, now warm.

jaxrnn reads The Time Machine from tests/data ($JAXRNN_DATA_DIR, checked by sha1, exactly as the default
run reads it); d2l's tool reads the same file. Neither process sees a JAX_COMPILATION_CACHE_DIR of the
caller's, and the user's own jaxrnn cache is not touched (d2l's install in it is reused).

stdout: a markdown table (command, wall, ratio to d2l's process of the same model, val ppl); with
--repeats R each wall is the median of R runs. stderr: progress. --json-out FILE also writes the rows.
d2l's val ppl is its ProgressBoard's (mean of per-batch exp(loss)), jaxrnn's the token-weighted one.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from toolcli import Parser, ToolError, positive_int, run_main

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "tests" / "data"
MODELS = ("scratch", "concise")
DEFAULT_EPOCHS = 100
KINDS = ("d2l", "cold", "warm")  # the three processes per model, in the order they run
RESULT_LINE = re.compile(r"perplexity ([0-9.]+), (.*)")


@dataclass
class Row:
    """One command of the table: its wall clock per repeat, its ratio to d2l's process and its result."""

    model: str
    kind: str  # d2l | cold | warm
    command: str
    walls_s: list[float] = field(default_factory=list)
    val_ppl: float | None = None
    sample: str | None = None
    ratio: float | None = None  # median wall over d2l's median wall, same model

    @property
    def wall_s(self) -> float:
        return statistics.median(self.walls_s)


def log(msg: str) -> None:
    print(f"seed_vs_d2l: {msg}", file=sys.stderr, flush=True)


def parse_jaxrnn_result(stdout: str) -> tuple[float, str]:
    """(val ppl, sample) from `jaxrnn train`'s last stdout line: `perplexity 7.2, 'time traveller ...'`."""
    lines = stdout.strip().splitlines()
    m = RESULT_LINE.fullmatch(lines[-1].strip()) if lines else None
    if m is None:
        raise ToolError(f"jaxrnn train's last stdout line is not 'perplexity P, SAMPLE': {lines[-1:]}; "
                        "run the command alone to see its output")
    try:
        sample = ast.literal_eval(m.group(2))
    except (ValueError, SyntaxError):  # not a Python literal: take the text as it is
        sample = m.group(2)
    return float(m.group(1)), str(sample)


def parse_d2l_result(stdout: str) -> dict:
    """The JSON object d2l_baseline.py train prints as its last stdout line."""
    lines = stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise ToolError(f"d2l_baseline.py's last stdout line is not JSON: {lines[-1:]}; "
                        "run it alone to see its output") from None
    return result


def set_ratios(rows: list[Row]) -> None:
    """Each row's median wall over the median wall of d2l's row of the same model."""
    d2l = {r.model: r.wall_s for r in rows if r.kind == "d2l"}
    for r in rows:
        r.ratio = r.wall_s / d2l[r.model] if r.model in d2l else None


def label(row: Row) -> str:
    if row.kind == "d2l":
        return f"d2l's JAX code, {row.model} (`{row.command}`)"
    if row.kind == "cold":
        return f"`{row.command}`, empty compile cache"
    return "same, warm compile cache"


def format_table(rows: list[Row]) -> str:
    """The markdown table of docs/benchmarks.md: command, wall (median of repeats), x d2l, val ppl."""
    out = ["| command | wall | x d2l | val ppl |", "| --- | ---: | ---: | ---: |"]
    for r in rows:
        wall = f"{r.wall_s:.1f} s"
        if len(r.walls_s) > 1:
            wall += " (" + " / ".join(f"{w:.1f}" for w in r.walls_s) + ")"
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        ppl = "-" if r.val_ppl is None else f"{r.val_ppl:g}"
        out.append(f"| {label(r)} | {wall} | {ratio} | {ppl} |")
    return "\n".join(out)


def jaxrnn_command() -> list[str]:
    """The `jaxrnn` console script next to this Python, else `python -m jaxrnn.cli`."""
    script = Path(sys.executable).with_name("jaxrnn")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "jaxrnn.cli"]


def run_timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run `cmd` from the repo root; (wall seconds, stdout). A failure raises ToolError with its last line."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ToolError(f"{' '.join(cmd)} exited with {proc.returncode} ({last}); fix that and run again")
    return wall, proc.stdout


def measure(models: list[str], epochs: int, repeats: int) -> list[Row]:
    """Run d2l / cold jaxrnn / warm jaxrnn for each model, `repeats` times; the rows in table order."""
    base = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    base.pop("JAXRNN_COMPILE_CACHE", None)  # jaxrnn's own cache on, in the private directory below
    ep = [] if epochs == DEFAULT_EPOCHS else ["--epochs", str(epochs)]
    rows: dict[tuple[str, str], Row] = {}
    runs = len(models) * repeats * len(KINDS)
    done = 0
    with tempfile.TemporaryDirectory(prefix="seed_vs_d2l-") as tmp:
        for model in models:
            for rep in range(repeats):
                cache = Path(tmp) / f"cache-{model}-{rep}"  # empty for the cold run, warm for the next
                for kind in KINDS:
                    if kind == "d2l":
                        shown = ["python", "tools/d2l_baseline.py", "train", model, *ep]
                        cmd = [sys.executable, str(ROOT / "tools" / "d2l_baseline.py"), "train", model, *ep]
                        env = base
                    else:
                        shown = ["jaxrnn", "train", "--model", model, *ep]
                        out = Path(tmp) / f"run-{model}-{rep}-{kind}"
                        cmd = [*jaxrnn_command(), "train", "--model", model, *ep, "--out", str(out)]
                        env = {**base, "XDG_CACHE_HOME": str(cache), "JAXRNN_DATA_DIR": str(DATA_DIR)}
                    done += 1
                    log(f"[{done}/{runs}] {' '.join(shown)}" + (f" ({kind} compile cache)" if kind != "d2l" else ""))
                    wall, stdout = run_timed(cmd, env)
                    if kind == "d2l":
                        result = parse_d2l_result(stdout)
                        ppl, sample = result["val_ppl"], result.get("sample")
                    else:
                        ppl, sample = parse_jaxrnn_result(stdout)
                    fit = f" ({result['setup_s']:.1f} s setup, {result['total_s']:.1f} s Trainer.fit)" \
                        if kind == "d2l" and "setup_s" in result else ""
                    log(f"  {wall:.1f} s{fit}, val ppl {ppl}, {sample!r}")
                    row = rows.setdefault((model, kind), Row(model, kind, " ".join(shown)))
                    row.walls_s.append(round(wall, 3))
                    row.val_ppl, row.sample = ppl, sample
    table = list(rows.values())
    set_ratios(table)
    return table


def parse_models(s: str) -> list[str]:
    models = [m.strip() for m in s.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of {', '.join(MODELS)}")
    return list(dict.fromkeys(models))


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="tools/seed_vs_d2l.py", description=__doc__.split("\n")[0],
                epilog="The full run (100 epochs, both models) takes about 3 minutes on 2 CPU cores.")
    p.add_argument("--models", type=parse_models, default=list(MODELS), help="default: scratch,concise")
    p.add_argument("--epochs", type=positive_int, default=DEFAULT_EPOCHS, help="default: %(default)s")
    p.add_argument("--repeats", type=positive_int, default=1, help="runs of each command; walls are medians")
    p.add_argument("--json-out", metavar="FILE", help="also write the rows as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    if args.json_out and not Path(args.json_out).resolve().parent.is_dir():
        raise ToolError(f"--json-out {args.json_out}: its directory does not exist; create it or pass another FILE")
    rows = measure(args.models, args.epochs, args.repeats)
    print(format_table(rows), flush=True)
    if args.json_out:
        doc = {"epochs": args.epochs, "repeats": args.repeats,
               "rows": [{**asdict(r), "wall_s": r.wall_s} for r in rows]}
        try:
            Path(args.json_out).write_text(json.dumps(doc, indent=1) + "\n")
        except OSError as e:
            raise ToolError(f"cannot write {args.json_out} ({e.strerror}); pass --json-out FILE "
                            "in a writable directory") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
