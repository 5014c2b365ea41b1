"""The registry's cells compared: at equal parameters on the seed's data, or at equal time on Tiny Shakespeare.

Equal parameters (the default): each model gets the hidden size that brings its parameter count closest to
the budget without going over (default: the one-layer tanh RNN at hidden 256), and all train alike: the
seed's windows (10000 train, 5000 validation, 32 steps), Adam, global-norm clipping at 1, each with `--seeds`
seeds trained as one program (`jaxrnn.train(cfg, seeds=N)`). Prints a markdown table (cell, layers, hidden,
parameters, the final and best validation perplexity's mean ± std over the seeds and the final one's 95%
interval, training seconds) to stdout and, with `--plot`, draws every model's mean validation perplexity per
epoch with its band over the seeds.

Equal time (`--race SECONDS ...`, e.g. `--race 100 600`): every cell on Tiny Shakespeare in the race's shape
(`--preset shakespeare-cpu`: one layer of 192, 64-character windows, batch 64, Adam with a warmed-up cosine schedule;
from 5 minutes the 10-minute recipe's two layers of 224 with dropout 0.15, and AdamW's decoupled weight decay) as
scratch cells with one init scale (`--sigma`, default 0.1, about Flax's); each cell gets the optimizer steps its solo
run makes in SECONDS on this machine (measured first, by a short solo run: its steps/s, kept in DIR so a resumed
comparison keeps its plan). A small sweep picks each cell's learning rate (`--lr-factors` times the preset's,
`--sweep-seeds` seeds each; a best at the sweep's edge goes one factor further that way, up to `--extend` times), then
`--seeds` seeds at the best one: the sweep's runs there (the same seeds' runs) and the rest. Runs train as programs of
`--per-program` replicas (`jaxrnn sweep`'s; default the device count on CPUs, where a bigger program trains each
replica no faster), and race.json (in DIR) keeps each program's results as it ends: the sweep's rates, and each seed's
whole validation loss, curve and sample. So the same command goes on where a stopped comparison stopped: a kept cell's
row, rate or seed is not trained again, and a race.json carried to another machine or session carries the comparison
with its plan (a program cut short resumes from its checkpoints on the machine that ran it, and trains anew
elsewhere). A budget's rows of another shape than this command's are set aside in race.json, and the budget races
anew. Prints a markdown table per budget (cell, parameters, characters/s, steps, best lr, val loss mean ± std and its
95% interval on the whole validation part; the sweep and the curves read the runs' own sampled validation; the median
seed's sample), says which cell is best and whether the next one's interval overlaps, writes DIR/race.json and draws
DIR/race-SECONDS.png (val loss against the solo run's wall time, bands over the seeds). Progress goes to stderr.
Run from the repo root:

    python experiments/compare_cells.py [--budget-hidden 256] [--epochs 20] [--lr 0.005] [--batch-size 256]
        [--impl scratch] [--seeds 5] [--plot cells.png] [--json-out FILE]
    python experiments/compare_cells.py --race 100 600 [--cells ...] [--seeds 5] [--out runs/race-cells]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

import jaxrnn
from jaxrnn import cells, run, rundir, sweep
from jaxrnn.config import PRESETS
from jaxrnn.errors import Stopped
from jaxrnn.parallel import use_cpu_cores
from jaxrnn.plots import plot_curves
from jaxrnn.spread import Spread, median_index
from jaxrnn.training import fit


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-hidden", type=int, default=256, help="the budget is a 1-layer tanh RNN of this width")
    p.add_argument("--cells", nargs="+", choices=jaxrnn.config.CELLS, help="default rnn lstm gru; with --race: every "
                   "cell but gru-d2l")
    p.add_argument("--layers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.005, help="Adam's learning rate (default 0.005)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--impl", default="scratch", choices=["scratch", "flax"])
    p.add_argument("--seeds", type=int, default=5, help="seeds of each model, as one program (default 5)")
    p.add_argument("--plot", metavar="FILE", help="save the perplexity curves")
    p.add_argument("--json-out", metavar="FILE", help="also write the rows as JSON, after each model")
    race = p.add_argument_group("equal time on Tiny Shakespeare")
    race.add_argument("--race", nargs="+", type=float, metavar="SECONDS", help="the budgets, each cell's solo seconds")
    race.add_argument("--out", default="runs/race-cells", help="where the runs and race.json go (default %(default)s)")
    race.add_argument("--lr-factors", default="0.5,1,2", help="the sweep's rates, times the preset's (default 0.5,1,2)")
    race.add_argument("--sweep-seeds", type=int, default=1, help="seeds of each rate in the sweep (default 1)")
    race.add_argument("--extend", type=int, default=2, help="times a sweep whose best rate is its lowest or highest "
                      "goes one factor further that way (default 2)")
    race.add_argument("--sigma", type=float, default=0.1, help="every cell's init scale (default 0.1)")
    race.add_argument("--data", help="the corpus file (default Tiny Shakespeare, downloaded or $JAXRNN_DATA_DIR)")
    race.add_argument("--per-program", type=int, metavar="N", help="replicas (rates or seeds) trained as one program "
                      "(default: the device count on CPUs, all of a sweep's or a cell's seeds on an accelerator)")
    race.add_argument("--calibration-steps", type=int, default=100, help="the solo run that measures steps/s")
    return p.parse_args(argv)


def count_params(cfg: jaxrnn.Config, vocab_size: int) -> int:
    """Parameters of the model `cfg` names, from shapes only (nothing is initialised)."""
    shapes = jax.eval_shape(jaxrnn.build_model(cfg, vocab_size).init, jax.random.key(0))
    return sum(math.prod(a.shape) for a in jax.tree.leaves(shapes))


def hidden_for(cfg: jaxrnn.Config, vocab_size: int, budget: int) -> int:
    """The largest hidden size whose model has at most `budget` parameters (bisection: the count
    grows with the hidden size), a multiple of the sLSTM's heads (its width splits into them)."""
    step = int(cells.with_defaults(cfg.cell, cfg.cell_options or {}).get("heads", 1))

    def fits(k: int) -> bool:
        return count_params(cfg.replace(hidden=k * step), vocab_size) <= budget

    lo, hi = 1, 2
    while fits(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo * step


# every cell but d2l's GRU form (the GRU's twin, slower), the GRU of the race first, then the new cells
RACE_CELLS = ["gru", "minlstm", "lru", "rglru", "slstm", "lstm", "mingru", "indrnn", "rnn"]


# the race's shape from 5 minutes: the 10-minute recipe's with AdamW's decoupled weight decay, since at 35 passes
# over the text its GRU is limited by overfitting and decay is what moves it (docs/results.md)
LONG_RACE = {"optimizer": "adamw", "weight_decay": 0.16}


def race_shape(budget: float) -> dict[str, Any]:
    """The shape a budget races in, a preset and the settings over it: the race's (`shakespeare-cpu`, one layer
    of 192) under 5 minutes, the 10-minute recipe's (`shakespeare-10min`, two layers of 224, dropout 0.15) with
    `LONG_RACE` from there."""
    return {"preset": "shakespeare-cpu"} if budget < 300 else {"preset": "shakespeare-10min", **LONG_RACE}


def over_preset(shape: dict[str, Any]) -> dict[str, Any]:
    """A shape's settings over its preset."""
    return {k: v for k, v in shape.items() if k != "preset"}


def shape_text(shape: dict[str, Any]) -> str:
    """A shape as flags: `--preset P --optimizer adamw --weight-decay W`."""
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in shape.items())


def rate_key(cell: str, preset: str) -> str:
    """Where a cell's measured rate in a preset's shape is kept in the plan: by its name in the race's shape
    (the settings over a preset leave a step's cost as it is)."""
    return cell if preset == "shakespeare-cpu" else f"{cell} ({preset})"


def race_base(cell: str, shape: dict[str, Any], args: argparse.Namespace) -> jaxrnn.Config:
    """A cell's config in a race's shape, as scratch cells with one init scale."""
    base = PRESETS[shape["preset"]].replace(cell=cell, impl="scratch", sigma=args.sigma, **over_preset(shape))
    return base.replace(data=args.data) if args.data else base


def race_dir(budget: float, shape: dict[str, Any]) -> str:
    """A budget's runs' directory under --out: `600s`, then the settings' values over its preset
    (`600s-adamw-0.16`), so a budget raced again in another shape never meets the runs of the one before."""
    return f"{budget:g}s" + "".join(f"-{v}" for v in over_preset(shape).values())


def steps_per_s(cfg: jaxrnn.Config, corpus: jaxrnn.data.Corpus, steps: int) -> float:
    """A cell's solo training rate on this machine: optimizer steps per second of a `steps`-step run,
    compilation excluded."""
    short = cfg.replace(steps=steps, eval_every=steps, save_every=steps, warmup=min(cfg.warmup, steps - 1))
    timings: dict[str, float] = {}
    fit(short, corpus, jaxrnn.build_model(short, len(corpus.vocab)), timings=timings)
    return steps / timings["train_s"]


def seed_record(run_dir: Path, prompt: str, rate: float) -> dict[str, Any]:
    """One finished seed of a cell, as race.json keeps it: its loss on the whole validation part (as `jaxrnn
    eval` reads it; the run's own validation is a sample of batches), its last sampled validation loss, its
    curve (val loss against the solo run's seconds) and its greedy sample."""
    trained, history = jaxrnn.load(run_dir), rundir.read_metrics(run_dir)
    return {"val_loss": jaxrnn.evaluate(trained), "val_loss_sampled": history[-1]["val_loss"],
            "curve": [(r["step"] / rate, r["val_loss"]) for r in history], "sample": trained.predict(prompt, 60)}


def in_programs(items: list[Any], args: argparse.Namespace, each: int = 1) -> list[list[Any]]:
    """`items` (rates with `each` replicas, or seeds) in the programs they train as: `--per-program` replicas,
    by default the device count on CPUs and all at once on an accelerator."""
    size = args.per_program or (len(jax.devices()) if jax.devices()[0].platform == "cpu" else len(items) * each)
    n = max(size // each, 1)
    return [items[i:i + n] for i in range(0, len(items), n)]


def race_config(cell: str, budget: float, args: argparse.Namespace, plan: dict[str, Any]
                ) -> tuple[jaxrnn.Config, float, Path]:
    """A cell's config at one budget, its steps its measured rate (`plan`) times the budget; the rate, and
    the directory its sweep and seeds go in."""
    shape = race_shape(budget)
    rate = plan["steps_per_s"][rate_key(cell, shape["preset"])]
    steps = max(round(budget * rate), 10)
    cfg = race_base(cell, shape, args).replace(steps=steps, eval_every=max(steps // 5, 1),
                                                save_every=max(steps // 5, 1))
    return cfg, rate, Path(args.out) / race_dir(budget, shape) / cell


def race_seeds(cfg: jaxrnn.Config, lr: float, args: argparse.Namespace, where: Path, done: dict[str, Any],
               record: Callable[[Path], dict[str, Any]], save: Callable[[], None]) -> dict[str, dict[str, Any]]:
    """The records (`record`: `seed_record`) of a cell's seeds at one rate, by seed, each kept in `done` and
    saved as its program ends: a seed its rate sweep trained there (a seed at a rate is the same run in the
    sweep as among the seeds; training it again would add nothing), the rest in programs of `--per-program`,
    each in `where`/seeds-lrLR/seeds-S-... (its own, so one stopped goes on from its checkpoints)."""
    want = run.seed_list(cfg, args.seeds)
    for s, d in swept_runs(where, lr).items():
        if s in want and str(s) not in done:
            done[str(s)] = record(d)
            save()
    for part in in_programs([s for s in want if str(s) not in done], args):
        out = where / f"seeds-lr{lr:g}" / ("seeds-" + "-".join(map(str, part)))
        point = out / sweep.run_sweep(cfg, {"lr": [lr]}, tuple(part), out, progress=False, say=say)[0]["dir"]
        for s, d in group_runs(point).items():
            done[str(s)] = record(d)
        save()
    return {str(s): done[str(s)] for s in want}


def swept_runs(where: Path, lr: float) -> dict[int, Path]:
    """The runs (by seed) a cell's rate sweep trained at `lr`, in `where`/sweep*/; none if it did not."""
    for saved in sorted(where.glob(f"sweep*/{sweep.SWEEP}")):
        for row in json.loads(saved.read_text())["rows"]:
            if row["settings"]["lr"] == lr:
                return group_runs(saved.parent / row["dir"])
    return {}


def group_runs(point: Path) -> dict[int, Path]:
    """A group's replicas' run directories, by seed (its group.json)."""
    group = json.loads((point / rundir.GROUP).read_text())
    return {s: point / r for s, r in zip(group["seeds"], group["replicas"], strict=True)}


def race_cell(cell: str, budget: float, args: argparse.Namespace, plan: dict[str, Any],
              sweeps: dict[str, list[dict[str, Any]]], seeds: dict[str, dict[str, Any]],
              save: Callable[[], None]) -> dict[str, Any]:
    """One cell at one budget: the rate sweep, then the seeds at the best rate; its row. The sweep's rates go
    into `sweeps` (the budget's, by cell) and the seeds' records into `seeds` as each program ends, saved at
    once, so a comparison carried to another machine trains only what is not there; the row takes both."""
    cfg, rate, where = race_config(cell, budget, args, plan)
    corpus = jaxrnn.corpus_for(cfg)
    swept = sweep_rates(cfg, cell, budget, where, args, sweeps.setdefault(cell, []), save)
    best_lr = min(swept, key=lambda r: r["val_loss"]["mean"])["lr"]
    if seeds.get(cell, {}).get("lr") != best_lr:  # (seeds kept at another rate: a sweep since extended)
        seeds[cell] = {"lr": best_lr, "runs": {}}
    say(f"{cell}, {budget:g} s: lr {best_lr} is best; {args.seeds} seeds there")
    record = functools.partial(seed_record, prompt=corpus.prompt, rate=rate)
    records = race_seeds(cfg, best_lr, args, where, seeds[cell]["runs"], record, save)
    runs = list(records.values())
    losses = [r["val_loss"] for r in runs]
    return {"cell": cell, "budget_s": budget, "params": count_params(cfg, len(corpus.vocab)),
            "steps": cfg.steps, "chars_per_s": rate * cfg.batch_size * cfg.num_steps, "lr": best_lr, "sweep": swept,
            "val_loss": Spread.of(losses).to_dict(),
            "val_loss_sampled": Spread.of([r["val_loss_sampled"] for r in runs]).to_dict(),
            "sample": runs[median_index(losses)]["sample"], "curves": [r["curve"] for r in runs],
            "seeds": {s: {k: v for k, v in r.items() if k != "curve"} for s, r in records.items()}}


def sweep_rates(cfg: jaxrnn.Config, cell: str, budget: float, where: Path, args: argparse.Namespace,
                swept: list[dict[str, Any]], save: Callable[[], None]) -> list[dict[str, Any]]:
    """A cell's rate sweep (`--lr-factors` times the preset's rate, `--sweep-seeds` each), one factor further
    while its best is at an edge (`--extend` times at most): its {"lr", "val_loss"} rows in `swept`, each
    program's added and saved as it ends (a rate found there is not trained again)."""
    lrs = [round(cfg.lr * float(f), 6) for f in args.lr_factors.split(",")]
    todo = [lr for lr in lrs if lr not in {r["lr"] for r in swept}]
    if todo:
        say(f"{cell}, {budget:g} s: {cfg.steps} steps; sweeping lr {todo}")

    def train(part: list[float]) -> None:
        out = where / ("sweep-lr" + "-".join(f"{lr:g}" for lr in part))
        rows = sweep.run_sweep(cfg, {"lr": part}, args.sweep_seeds, out, progress=False, say=say)
        swept.extend({"lr": r["settings"]["lr"], "val_loss": r["val_loss"]} for r in rows)
        save()

    for part in in_programs(todo, args, args.sweep_seeds):
        train(part)
    # a best at the sweep's edge may not be the best: one rate further that way
    while len(swept) < len(lrs) + args.extend and (further := beyond(swept, lr_step(args))) is not None:
        say(f"{cell}, {budget:g} s: the best rate is the sweep's edge; trying lr {further}")
        train([further])
    return swept


def settled(swept: list[dict[str, Any]], args: argparse.Namespace) -> bool:
    """Whether a kept sweep is one this command would end with: its best inside its rates, or extended as far
    as `--extend` lets it (a sweep kept from before the sweep went past its edges is not)."""
    return beyond(swept, lr_step(args)) is None or len(swept) >= len(args.lr_factors.split(",")) + args.extend


def lr_step(args: argparse.Namespace) -> float:
    """The ratio of the sweep's two highest factors: how much further an extension goes (2 for 0.5,1,2)."""
    factors = sorted(float(f) for f in args.lr_factors.split(","))
    return factors[-1] / factors[-2] if len(factors) > 1 else 2.0


def beyond(swept: list[dict[str, Any]], step: float) -> float | None:
    """The next rate to try when a sweep's best ({"lr", "val_loss"} rows) is its lowest or highest rate: one
    `step` (the sweep's ratio) further that way; None when the best is inside the sweep."""
    rates = sorted(r["lr"] for r in swept)
    best = min(swept, key=lambda r: r["val_loss"]["mean"])["lr"]
    if len(rates) < 2 or rates[0] < best < rates[-1]:
        return None
    return round(best * step if best == rates[-1] else best / step, 6)


def race_table(rows: list[dict[str, Any]]) -> str:
    """A budget's rows as markdown, best first, and which cell is best with whether the next one's interval
    of the mean overlaps its own."""
    rows = sorted(rows, key=lambda r: r["val_loss"]["mean"])
    lines = ["| cell | params | chars/s | steps | lr | val loss | 95% interval | sample |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        loss = Spread(**r["val_loss"])
        text = r["sample"].replace("\n", " / ").replace("|", "/")
        lines.append(f"| {r['cell']} | {r['params']:,} | {r['chars_per_s']:,.0f} | {r['steps']} | {r['lr']:g} | "
                     f"{loss.mean:.3f} ± {loss.std:.3f} | {loss.lo:.3f}-{loss.hi:.3f} | {text!r} |")
    if len(rows) > 1:
        a, b = Spread(**rows[0]["val_loss"]), Spread(**rows[1]["val_loss"])
        apart = "apart: the difference is real" if a.hi < b.lo else "overlapping: the seeds do not separate them"
        lines.append(f"\nbest: {rows[0]['cell']} ({a.lo:.3f}-{a.hi:.3f}); next: {rows[1]['cell']} "
                     f"({b.lo:.3f}-{b.hi:.3f}), {apart}")
    return "\n".join(lines)


def race_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Val loss against the solo run's wall time, each cell's mean over its seeds in a band from the lowest
    to the highest, best first."""
    curves = {r["cell"]: [[{"seconds": t, "val_loss": loss} for t, loss in c] for c in r["curves"]]
              for r in sorted(rows, key=lambda r: r["val_loss"]["mean"])}
    plot_curves(curves, path, splits=("val",), x="seconds", y="loss")


def set_aside(kept: dict[str, Any], budgets: list[float]) -> list[str]:
    """Moves a budget's rows and sweeps that race.json (`kept`) holds in another shape than `race_shape`'s into
    its 'superseded' list, so a new shape starts anew and nothing is lost, and records each budget's shape; the
    budgets set aside. A race.json from before shapes were kept raced each budget in its preset alone."""
    moved = []
    shapes, rows, sweeps = kept.setdefault("shapes", {}), kept["budgets"], kept.setdefault("sweeps", {})
    for budget in budgets:
        key, shape = f"{budget:g}", race_shape(budget)
        was = shapes.get(key, {"preset": shape["preset"]})
        if was != shape and (rows.get(key) or sweeps.get(key)):
            kept.setdefault("superseded", []).append({"budget_s": budget, "shape": was, "rows": rows.pop(key, []),
                                                      "sweeps": sweeps.pop(key, {})})
            moved.append(key)
        shapes[key] = shape
    return moved


def race(args: argparse.Namespace) -> int:
    """Every cell at every budget; the tables, race.json and the plots."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "race.json"
    kept = json.loads(saved.read_text()) if saved.exists() else {"plan": {"steps_per_s": {}}, "budgets": {}}
    plan = kept["plan"]
    for preset in dict.fromkeys(race_shape(b)["preset"] for b in args.race):  # every rate first, on a quiet machine
        for cell in args.cells or RACE_CELLS:
            key = rate_key(cell, preset)
            if key not in plan["steps_per_s"]:  # kept for good: a resumed comparison keeps its steps
                base = race_base(cell, {"preset": preset}, args)
                plan["steps_per_s"][key] = steps_per_s(base, jaxrnn.corpus_for(base), args.calibration_steps)
                say(f"{cell}, {preset}: {plan['steps_per_s'][key]:.1f} steps/s solo")
    for key in set_aside(kept, args.race):
        say(f"{key} s: race.json's rows of another shape set aside under 'superseded'; it races anew in "
            f"{shape_text(kept['shapes'][key])}")
    results: dict[str, list[dict[str, Any]]] = kept["budgets"]  # a cell whose row is kept is not trained again
    sweeps: dict[str, dict[str, Any]] = kept["sweeps"]  # the rates swept of a cell not done: not swept again
    seeds: dict[str, dict[str, Any]] = kept.setdefault("seeds", {})  # its seeds done at its best rate

    def save() -> None:
        saved.write_text(json.dumps(kept, indent=1))

    save()
    for budget in args.race:  # each budget's table as soon as its cells are done
        key = f"{budget:g}"
        rows, swept, seeded = results.setdefault(key, []), sweeps.setdefault(key, {}), seeds.setdefault(key, {})
        for cell in args.cells or RACE_CELLS:
            mine = [r for r in rows if r["cell"] == cell]
            if mine and not settled(mine[0]["sweep"], args):  # kept from before the sweep went past its edges
                rows.remove(mine[0])
                mine = []
            if not mine:
                rows.append(race_cell(cell, budget, args, plan, swept, seeded, save))
                swept.pop(cell)  # the row carries them
                seeded.pop(cell)
            save()
        print(f"\n{budget:g} s a cell (its solo run's time on {jax.devices()[0].platform}) in the shape of "
              f"{shape_text(race_shape(budget))}, {args.seeds} seeds at the best of lr x {args.lr_factors}, sigma "
              f"{args.sigma}:\n")
        shown = [r for r in rows if r["cell"] in (args.cells or RACE_CELLS)]
        print(race_table(shown), flush=True)
        race_plot(shown, out / f"race-{budget:g}.png")
        say(f"wrote {out / f'race-{budget:g}.png'}")
    return 0


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use_cpu_cores(None, args.batch_size)  # as `jaxrnn train` does: one XLA device per CPU core
    if args.race:
        try:
            return race(args)
        except jaxrnn.JaxrnnError as e:
            print(f"jaxrnn: error: {e}", file=sys.stderr)
            return 2
        except Stopped as e:  # its checkpoints saved: the same command goes on
            print(f"jaxrnn: {e}; run the same command again to go on", file=sys.stderr)
            return 128 + e.signum
    args.cells = args.cells or ["rnn", "lstm", "gru"]
    try:
        base = jaxrnn.Config(impl=args.impl, epochs=args.epochs, lr=args.lr, optimizer="adam",
                             batch_size=args.batch_size, save_every=args.epochs)
        corpus = jaxrnn.corpus_for(base)
        V = len(corpus.vocab)
        budget = count_params(base.replace(hidden=args.budget_hidden), V)
        rows, histories = [], {}
        for layers in args.layers:
            for cell in args.cells:
                cfg = base.replace(cell=cell, layers=layers)
                cfg = cfg.replace(hidden=hidden_for(cfg, V, budget))
                name = f"{cell} x{layers}"
                print(f"training {name}: hidden {cfg.hidden}, {count_params(cfg, V)} parameters", file=sys.stderr)
                t0 = time.perf_counter()
                group = jaxrnn.train(cfg, corpus=corpus, seeds=args.seeds)
                seconds = time.perf_counter() - t0
                histories[name] = [t.history for t in group.replicas]  # drawn as the mean with its band
                best = Spread.of([min(r["val_ppl"] for r in t.history) for t in group.replicas])
                rows.append({"cell": cell, "layers": layers, "hidden": cfg.hidden, "params": count_params(cfg, V),
                             "val_ppl": group.summary()["val_ppl"], "best_val_ppl": best.to_dict(),
                             "seconds": seconds, "sample": group.median.predict("time traveller", 40)})
                if args.json_out:  # after every model, so a comparison cut short keeps what it trained
                    Path(args.json_out).write_text(json.dumps(rows, indent=1))
    except jaxrnn.JaxrnnError as e:
        print(f"jaxrnn: error: {e}", file=sys.stderr)
        return 2
    print(f"budget: {budget} parameters (1-layer tanh RNN, hidden {args.budget_hidden}); {args.impl} cells, "
          f"Adam lr {args.lr}, batch {args.batch_size}, {args.epochs} epochs, {args.seeds} seeds, "
          f"{jax.devices()[0].platform}")
    print("| cell | layers | hidden | params | best val ppl | final val ppl | final's 95% interval | seconds |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        final, best = Spread(**r["val_ppl"]), Spread(**r["best_val_ppl"])
        print(f"| {r['cell']} | {r['layers']} | {r['hidden']} | {r['params']:,} | {best.mean:.2f} ± {best.std:.2f} | "
              f"{final.mean:.2f} ± {final.std:.2f} | {final.lo:.2f}-{final.hi:.2f} | {r['seconds']:.1f} |")
    if args.plot:
        print(f"wrote {plot_curves(histories, args.plot, log_scale=True, splits=('val',))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
