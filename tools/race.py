"""Race jaxrnn against nanoGPT's character-level recipe on Tiny Shakespeare, on this machine, in one command.

usage: python tools/race.py --nanogpt PATH [--preset shakespeare-cpu] [--budget SECONDS] [--json-out FILE]

PATH is a clone of karpathy/nanoGPT (its train.py, model.py, configurator.py, config/ and
data/shakespeare_char/prepare.py are used as they are, in a temporary copy). In order:

1. nanoGPT: its prepare.py on the Tiny Shakespeare text jaxrnn uses (`--data tinyshakespeare`: the same
   file, checked by sha1), then its README's CPU command, timed as a whole process, with
   `--always_save_checkpoint=True` so that the checkpoint holds the final weights (the recipe keeps
   the best of its 20-batch estimates otherwise), writing into the temporary copy;
2. jaxrnn: `jaxrnn train --preset PRESET --time-budget T` with T = nanoGPT's wall time (or --budget),
   timed as a whole process;
3. both models measured on the same protocol: mean cross-entropy in nats per character over the whole
   validation part (the last 10% of the text, nanoGPT's split), in non-overlapping blocks of 64
   characters, each read from an empty context. nanoGPT's final checkpoint is evaluated with its own
   model code (not its 20-batch estimate, which is reported beside it); jaxrnn's with `jaxrnn eval`
   (the preset trains on 64-step windows, so its `--split` part is read in blocks of 64);
4. a greedy sample of each from the prompt 'First Citizen:'.

stdout: a markdown table, then one JSON line with every figure. stderr: progress and the peers' logs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from toolcli import Parser, ToolError, run_main

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 64  # the protocol's block: nanoGPT's CPU recipe's block_size
PROMPT = "First Citizen:"
SAMPLE_CHARS = 200
NANOGPT_FILES = ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py",
                 "data/shakespeare_char/prepare.py")
# nanoGPT's README, "I only have a macbook" (its CPU recipe), and where it writes
NANOGPT_CPU = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
               "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
               "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]

# Runs in nanoGPT's copy: its own GPT on its own val.bin, blocks of BLOCK from an empty context, and a
# greedy sample; prints one JSON line.
_NANOGPT_EVAL = """
import json, pickle, sys
import numpy as np, torch
from model import GPT, GPTConfig
block, prompt, chars = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ckpt = torch.load("out/ckpt.pt", map_location="cpu")
model = GPT(GPTConfig(**ckpt["model_args"]))
state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
model.load_state_dict(state)
model.eval()
val = np.fromfile("data/shakespeare_char/val.bin", dtype=np.uint16).astype(np.int64)
starts = np.arange(0, len(val) - block, block)
total, count = 0.0, 0
with torch.no_grad():
    for i in range(0, len(starts), 256):
        s = starts[i:i + 256]
        x = torch.from_numpy(np.stack([val[j:j + block] for j in s]))
        y = torch.from_numpy(np.stack([val[j + 1:j + block + 1] for j in s]))
        logits, _ = model(x, y)
        total += torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1),
                                                   reduction="sum").item()
        count += y.numel()
    meta = pickle.load(open("data/shakespeare_char/meta.pkl", "rb"))
    ids = torch.tensor([[meta["stoi"][c] for c in prompt]])
    out = model.generate(ids, chars, temperature=1.0, top_k=1)[0].tolist()
print(json.dumps({"val_loss": total / count, "tokens": count, "iter": ckpt["iter_num"],
                  "sample": "".join(meta["itos"][i] for i in out)}))
"""


def log(msg: str) -> None:
    print(f"race: {msg}", file=sys.stderr, flush=True)


def run(args: list[str], cwd: Path, what: str, env: dict[str, str] | None = None) -> tuple[str, float]:
    """Run a command, its stderr passed through; (stdout, wall seconds). A failure is a ToolError."""
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise ToolError(f"{what} failed with exit status {proc.returncode} (its output is above); fix that and "
                        "run the race again")
    return proc.stdout, wall


def check_nanogpt(src: Path) -> None:
    missing = [f for f in NANOGPT_FILES if not (src / f).is_file()]
    if missing:
        raise ToolError(f"{src} lacks nanoGPT's {', '.join(missing)}; pass --nanogpt with a clone of "
                        "karpathy/nanoGPT")


def nanogpt_copy(src: Path, work: Path, text: Path) -> Path:
    """The files of nanoGPT's recipe copied into `work`, with the corpus as prepare.py's input.txt."""
    dest = work / "nanoGPT"
    for f in NANOGPT_FILES:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / f, dest / f)
    shutil.copy(text, dest / "data" / "shakespeare_char" / "input.txt")
    return dest


def race_nanogpt(src: Path, work: Path, text: Path) -> dict:
    nano = nanogpt_copy(src, work, text)
    # prepare.py imports requests only to download input.txt, which is there already
    prepare = "import runpy, sys, types; sys.modules.setdefault('requests', types.ModuleType('requests')); " \
              "runpy.run_path('data/shakespeare_char/prepare.py', run_name='__main__')"
    run([sys.executable, "-c", prepare], nano, "nanoGPT's prepare.py")
    log("nanoGPT: training with its README's CPU recipe ...")
    out, wall = run([sys.executable, "train.py", *NANOGPT_CPU, "--out_dir=out", "--always_save_checkpoint=True"],
                    nano, "nanoGPT's train.py")
    estimates = re.findall(r"val loss ([0-9.]+)", out)
    if not estimates:
        raise ToolError("nanoGPT printed no 'val loss' line; check its output above")
    log(f"nanoGPT: {wall:.1f} s, its last estimate val loss {estimates[-1]}; evaluating its checkpoint ...")
    result, _ = run([sys.executable, "-c", _NANOGPT_EVAL, str(BLOCK), PROMPT, str(SAMPLE_CHARS)], nano,
                    "evaluating nanoGPT's checkpoint")
    return {"wall_s": wall, "estimate": float(estimates[-1]), **json.loads(result.strip().splitlines()[-1])}


def race_jaxrnn(preset: str, budget: float, work: Path) -> dict:
    jaxrnn = [sys.executable, "-m", "jaxrnn.cli"]
    out_dir = work / "jaxrnn"
    log(f"jaxrnn: --preset {preset} --time-budget {budget:.1f} ...")
    out, wall = run([*jaxrnn, "train", "--preset", preset, "--time-budget", f"{budget:.3f}", "--out", str(out_dir),
                     "--json"], ROOT, "jaxrnn train")
    final = json.loads(out.strip().splitlines()[-1])
    evaluated, _ = run([*jaxrnn, "eval", "--run", str(out_dir)], ROOT, "jaxrnn eval")
    m = re.fullmatch(r"perplexity ([0-9.]+), bpc ([0-9.]+), loss ([0-9.]+)\n", evaluated)
    if not m:
        raise ToolError(f"jaxrnn eval printed {evaluated!r}, not 'perplexity X, bpc Y, loss Z'")
    cfg = json.loads((out_dir / "config.json").read_text())
    if cfg["num_steps"] != BLOCK or cfg["eval_protocol"] != "blocks" or cfg["data"] != "tinyshakespeare":
        raise ToolError(f"--preset {preset} does not read Tiny Shakespeare in blocks of {BLOCK}; the race compares "
                        "one protocol")
    sample, _ = run([*jaxrnn, "sample", "--run", str(out_dir), "--prefix", PROMPT, "--num-preds", str(SAMPLE_CHARS)],
                    ROOT, "jaxrnn sample")
    return {"wall_s": wall, "val_loss": float(m.group(3)), "estimate": math.log(final["perplexity"]),
            "step": final.get("step"), "sample": sample.rstrip("\n")}


def table(nano: dict, jax: dict) -> str:
    rows = [("nanoGPT, its README's CPU recipe", nano), ("jaxrnn, --preset shakespeare-cpu", jax)]
    lines = ["| | whole process | val loss (blocks of 64, whole val part) | its own estimate | greedy sample |",
             "| --- | ---: | ---: | ---: | --- |"]
    for name, r in rows:
        sample = r["sample"][len(PROMPT):].replace("\n", "\\n")[:80]
        lines.append(f"| {name} | {r['wall_s']:.1f} s | {r['val_loss']:.4f} | {r['estimate']:.4f} | `{sample}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="tools/race.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--nanogpt", required=True, type=Path, help="a clone of karpathy/nanoGPT")
    p.add_argument("--preset", default="shakespeare-cpu", help="jaxrnn's preset (default shakespeare-cpu)")
    p.add_argument("--budget", type=float, help="jaxrnn's --time-budget in seconds (default: nanoGPT's wall time)")
    p.add_argument("--json-out", type=Path, help="also write the JSON row to this file")
    p.add_argument("--keep", type=Path, help="keep both runs' files in this directory (default: a temporary one)")
    args = p.parse_args(argv)
    return run_main(lambda: _race(args))


def _race(args: argparse.Namespace) -> int:
    check_nanogpt(args.nanogpt)
    from jaxrnn.data import find_corpus
    from jaxrnn.errors import JaxrnnError

    try:
        text = find_corpus("tinyshakespeare")
    except JaxrnnError as e:
        raise ToolError(str(e)) from None
    with tempfile.TemporaryDirectory(prefix="jaxrnn-race-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        nano = race_nanogpt(args.nanogpt, work, text)
        jax = race_jaxrnn(args.preset, args.budget or nano["wall_s"], work)
    print(table(nano, jax))
    row = {"machine_cores": os.cpu_count(), "nanogpt": nano, "jaxrnn": jax,
           "jaxrnn_minus_nanogpt_val_loss": jax["val_loss"] - nano["val_loss"],
           "wall_ratio": jax["wall_s"] / nano["wall_s"]}
    print(json.dumps(row), flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(row, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
