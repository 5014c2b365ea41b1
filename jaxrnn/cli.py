"""`jaxrnn train | sample | eval | runs | plot | sweep | bench | serve | export`: the commands, each a function of
the parsed command line (flags.py) calling the library; bad input -> exit 2.

stdout carries results only; progress, logs and warnings go to stderr.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from jaxrnn import faults, strict_json
from jaxrnn.config import Config, flag
from jaxrnn.errors import JaxrnnError, Stopped
from jaxrnn.flags import _given, build_parser, config_from_args, parse  # noqa: F401 (also read as cli.X)
from jaxrnn.progress import Progress


def _refuse_with_resume(args: argparse.Namespace) -> None:
    """--resume takes the run's saved config: settings that would change it are refused."""
    flags = [f"--no-{flag(k)[2:]}" if v is False else flag(k) for k, v in _given(args).items()]
    flags += [flag(n) for n in ("preset", "config", "out", "force", "seeds") if getattr(args, n)]
    if flags:
        raise JaxrnnError(f"--resume continues a run with its saved config; drop {' '.join(flags)}")


def _check_distributed(args: argparse.Namespace, cfg: Config) -> None:
    """What a multi-process run needs from its flags: --distributed with the launch flags, all three of
    them or none, a run directory named alike in every process, and every device of every process."""
    launch = {"--coordinator": args.coordinator, "--num-processes": args.num_processes,
              "--process-id": args.process_id}
    if not args.distributed:
        if any(v is not None for v in launch.values()):
            raise JaxrnnError(f"{', '.join(launch)} launch a distributed run; add --distributed, or drop them")
        return
    missing = [flag for flag, v in launch.items() if v is None]
    if missing and len(missing) < 3:
        raise JaxrnnError(f"{', '.join(launch)} go together; pass {' '.join(missing)} too, or none of them where "
                          "JAX finds its peers itself")
    if args.num_processes is not None and args.process_id >= args.num_processes:
        raise JaxrnnError(f"--process-id {args.process_id} is not below --num-processes {args.num_processes}; "
                          f"number the processes 0 to {args.num_processes - 1}")
    if not (args.out or args.resume):
        raise JaxrnnError("a distributed run needs --out RUN_DIR (or --resume RUN_DIR) on a filesystem every "
                          "process shares; pass it to every process")
    if cfg.devices is not None:
        raise JaxrnnError("a distributed run trains on every device of every process; drop --devices (a run "
                          "whose config.json sets devices resumes in one process only)")
    if args.per_step:
        raise JaxrnnError("--per-step is the chapter's one-process loop (a jitted call per batch); drop it, "
                          "a distributed run trains in fused chunks")
    if args.seeds is not None:
        raise JaxrnnError("--seeds trains its replicas in one process so far; drop --distributed, or --seeds")


def _native_stdout_off() -> None:
    """Keep stdout for results and jaxrnn's line last on stderr: what native libraries print on file
    descriptor 1 is dropped (gloo's notice of each connection it makes, which its own buffer writes out
    at exit, after jaxrnn's last line), while `print` still writes to the real stdout."""
    sys.stdout.flush()
    results = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    sys.stdout = os.fdopen(results, "w", buffering=1)


def loss_line(loss: float) -> str:
    """A measured loss in the field's three units: `perplexity 7.21, bpc 2.850, loss 1.976` (nats)."""
    from jaxrnn.training import bits, perplexity

    return f"perplexity {perplexity(loss):.2f}, bpc {bits(loss):.3f}, loss {loss:.3f}"


def result_line(perplexity: float, sample: str) -> str:
    """`train`'s last line: the sample as a Python string literal keeps it one line on any corpus (a
    newline reads \\n); on The Time Machine it reads `perplexity 7.2, 'time traveller and the ...'`."""
    return f"perplexity {perplexity:.1f}, {sample!r}"


def cmd_train(args: argparse.Namespace) -> int:
    """Train or resume; Ctrl-C and SIGTERM are deferred for the whole command (`interrupts`), so a run that
    completes prints its result and exits 0 whenever the signal came."""
    from jaxrnn import interrupts

    with interrupts.deferred() as signalled:
        code = _train(args)
        if signalled.signum:
            name = signal.Signals(signalled.signum).name
            print(f"jaxrnn: {name} came as the run completed; its result is above", file=sys.stderr, flush=True)
        return code


def _train(args: argparse.Namespace) -> int:
    from jaxrnn import interrupts, run
    from jaxrnn.loop import SAMPLE_CHARS
    from jaxrnn.parallel import initialize, is_primary, use_cpu_cores
    from jaxrnn.training import bits, perplexity

    if args.resume:
        _refuse_with_resume(args)
    saved = _saved_config(Path(args.resume)) if args.resume else None
    cfg = Config.load(saved) if saved and saved.is_file() else config_from_args(args)
    use_cpu_cores(cfg.devices, cfg.batch_size, args.num_processes or 1)  # before JAX starts its CPU backend
    _check_distributed(args, cfg)
    if args.distributed:
        _native_stdout_off()
        initialize(args.coordinator, args.num_processes, args.process_id)
    primary = is_primary()

    progress = Progress.of(cfg, "quiet" if args.quiet or not primary else "auto", args.json and primary)
    try:
        if args.resume:
            trained = run.resume(args.resume, per_step=args.per_step, progress=progress, time_budget=args.time_budget)
        else:
            out = args.out or os.path.join("runs", f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
            if not args.quiet:
                run.log(f"jaxrnn: training {cfg.name} into {out}")
            trained = run.train(cfg, out, per_step=args.per_step, force=args.force, progress=progress,
                                time_budget=args.time_budget, seeds=args.seeds)
    finally:
        progress.close()
    if not primary:  # process 0 reports for all
        return 0
    if isinstance(trained, run.Group):
        return _group_result(args, trained)
    result: dict[str, Any] = {"run_dir": str(trained.run_dir), trained.cfg.unit: trained.done}
    if trained.cfg.split is not None and trained.cfg.split[2] > 0:
        loss = interrupts.wait(run.evaluate, trained, None, "test")
        result.update(test_perplexity=perplexity(loss), test_bpc=bits(loss), test_loss=loss)
        if not args.json:
            print(f"test {loss_line(loss)}", flush=True)
    sample = interrupts.wait(trained.predict, trained.prompt, SAMPLE_CHARS)
    result.update(perplexity=trained.val_ppl, sample=sample)
    print(strict_json.dumps(result) if args.json else result_line(result["perplexity"], result["sample"]), flush=True)
    return 0


def _saved_config(run_dir: Path) -> Path:
    """The config.json a run to resume was trained with: its own, or a group's first replica's."""
    from jaxrnn import rundir

    seeds = rundir.read_group(run_dir)
    return (rundir.replica_dir(run_dir, seeds[0]) if seeds else run_dir) / rundir.CONFIG


def _group_result(args: argparse.Namespace, group: Any) -> int:
    """A group's result: the spread of its final validation perplexity and the median replica's sample, or
    with --json every replica's result and the summary; a test part's spread too, where there is one."""
    from jaxrnn import interrupts, run
    from jaxrnn.loop import SAMPLE_CHARS
    from jaxrnn.spread import Spread
    from jaxrnn.training import perplexity

    cfg, median = group.replicas[0].cfg, group.median
    replicas = [{"seed": t.cfg.seed, "run_dir": str(t.run_dir), "perplexity": t.val_ppl} for t in group.replicas]
    summary = group.summary()
    if cfg.split is not None and cfg.split[2] > 0:
        tests = [interrupts.wait(run.evaluate, t, None, "test") for t in group.replicas]
        for r, loss in zip(replicas, tests):
            r["test_perplexity"] = perplexity(loss)
        summary["test_ppl"] = Spread.of([r["test_perplexity"] for r in replicas]).to_dict()
        if not args.json:
            print(f"test perplexity {Spread.of([r['test_perplexity'] for r in replicas])}", flush=True)
    sample = interrupts.wait(median.predict, median.prompt, SAMPLE_CHARS)
    spread = Spread.of([r["perplexity"] for r in replicas])
    result = {"run_dir": str(group.run_dir), cfg.unit: median.done, "perplexity": spread.mean, "sample": sample,
              "summary": summary, "replicas": replicas}
    print(strict_json.dumps(result) if args.json else f"perplexity {spread}, {sample!r}", flush=True)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from jaxrnn import interrupts, run
    from jaxrnn.sample import Sampling, check_length

    if args.prefix == "":
        raise JaxrnnError("the prompt is empty; pass --prefix with at least one character")
    check_length(args.num_preds)  # before the restore, as the sampling settings are
    how = Sampling(args.temperature, args.top_k, args.top_p, args.seed)
    trained = run.load(args.run, args.step)
    prefix = trained.prompt if args.prefix is None else args.prefix
    for text in interrupts.wait(trained.samples, prefix, args.num_preds, args.num_samples, how):
        print(text, flush=True)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from jaxrnn import interrupts, run

    trained = run.load(args.run, args.step)
    print(loss_line(interrupts.wait(run.evaluate, trained, args.data, args.part)), flush=True)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from jaxrnn import rundir
    from jaxrnn.spread import Spread

    rows = [("run", "best val ppl", "at", "best saved", "done", "model")]
    runs = rundir.find_runs(args.root)
    groups = {d.parent for d in runs if (d.parent / rundir.GROUP).is_file()}
    for d in sorted({*runs, *groups}):
        try:
            if d in groups:  # a group: one row, the spread of its replicas' best
                each = [rundir.summary(rundir.replica_dir(d, s)) for s in rundir.read_group(d)]
                bests = [s["best_val_ppl"] for s in each if s["best_val_ppl"] is not None]
                spread = Spread.of(bests) if bests else None
                s = {**each[0], "done": min(s["done"] for s in each), "best_epoch": None, "best_saved": None,
                     "name": f"{each[0]['name']}, {len(each)} seeds"}
                best = f"{spread.mean:.2f} ± {spread.std:.2f}" if spread else "-"
            elif d.parent in groups and not args.all:
                continue
            else:
                s = rundir.summary(d)
                best = f"{s['best_val_ppl']:.2f}" if s["best_val_ppl"] is not None else "-"
        except JaxrnnError as e:
            print(f"jaxrnn: warning: skipping {d}: {e}", file=sys.stderr)
            continue
        rows.append((os.path.relpath(d), best, str(s["best_epoch"] or "-"), str(s["best_saved"] or "-"),
                     f"{s['done']}/{s['epochs']} {s['unit']}s", s["name"]))  # epochs, or steps for a run by steps
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:  # a path one can pass to --run; 'best saved' is the checkpoint --step best loads
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1], flush=True)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from jaxrnn import rundir
    from jaxrnn.plots import legend_names, plot_curves

    histories = {}
    for d, name in zip(args.run_dirs, legend_names(args.run_dirs)):
        if rundir.read_group(Path(d)):  # a group: each replica's, drawn as a band
            history = rundir.group_histories(Path(d))
            history = history if all(history) else []
        else:
            history = rundir.read_metrics(d)
        if not history:
            raise JaxrnnError(f"{d} has no epochs in {rundir.METRICS}; pass run directories written by 'jaxrnn train'")
        histories[name] = history
    if len(histories) == 1:  # one run: the legend names the splits only
        histories = {"": next(iter(histories.values()))}
    print(plot_curves(histories, args.out, log_scale=args.log), flush=True)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from jaxrnn.bench import main as bench_main
    from jaxrnn.parallel import use_cpu_cores

    use_cpu_cores(None, 64)  # every case's batch size is a multiple of 64
    return bench_main(args)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Every point of the grid as a group, its table best first on stdout, sweep.png beside sweep.json."""
    from jaxrnn import run, rundir, sweep
    from jaxrnn.parallel import use_cpu_cores
    from jaxrnn.plots import plot_curves

    args.distributed, args.per_step = False, False
    base = config_from_args(args)
    grid = sweep.parse_grid(args.grid)
    sizes = grid.get("batch_size", [base.batch_size])
    use_cpu_cores(base.devices, math.gcd(*sizes))  # before JAX starts: devices that split every point's batch
    out = Path(args.out)
    rows = sweep.run_sweep(base, grid, args.seeds, out, args.force, not args.quiet, None if args.quiet else run.log)
    curves = {" ".join(f"{k}={v}" for k, v in r["settings"].items()): rundir.group_histories(out / r["dir"])
              for r in rows}
    plot_curves(curves, out / "sweep.png", log_scale=True, splits=("val",))
    print(strict_json.dumps(rows) if args.json else sweep.table(rows), flush=True)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Restore and compile every run, then serve them until SIGINT/SIGTERM (`jaxrnn.serve`)."""
    try:
        from jaxrnn import serve
    except ImportError as e:
        raise JaxrnnError(f"jaxrnn serve needs Starlette and uvicorn ({e}); pip install 'jaxrnn[serve]'") from None
    max_n = min(16, args.max_batch) if args.max_n is None else args.max_n
    if max_n > args.max_batch:
        raise JaxrnnError(f"--max-n {args.max_n} is more than --max-batch {args.max_batch}: a request's choices "
                          "decode in one batch; raise --max-batch or lower --max-n")
    sock = serve.listen(args.host, args.port)
    runs = serve.restore(args.run, args.step, args.max_batch)
    limits = serve.Limits(max_prompt=args.max_prompt, max_tokens=args.max_tokens, max_n=max_n)
    return serve.serve_forever(runs, sock, limits)


def cmd_export(args: argparse.Namespace) -> int:
    from jaxrnn import run
    from jaxrnn.export import export_run

    trained = run.load(args.run, args.step)
    out = export_run(trained, args.out)
    print(f"exported {args.run} ({trained.cfg.unit} {trained.done}) to {out}: decoder.jaxexport, params.npz, "
          "state.npz, model.json", flush=True)
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "runs": cmd_runs, "plot": cmd_plot,
            "sweep": cmd_sweep, "bench": cmd_bench, "serve": cmd_serve,
            "export": cmd_export}  # each subcommand of `build_parser`, by name


def enable_compile_cache() -> None:
    """Keep compiled programs in the user cache (`~/.cache/jaxrnn/xla`) so a rerun of the same config
    skips XLA compilation; `JAXRNN_COMPILE_CACHE=0` turns it off, and a cache the user configured for
    JAX (JAX_COMPILATION_CACHE_DIR) is left alone."""
    if os.environ.get("JAXRNN_COMPILE_CACHE", "1") == "0" or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    import jax

    from jaxrnn.data import cache_dir

    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    enable_compile_cache()
    try:
        faults.planned()  # a test's fault plan, checked before anything runs
        return COMMANDS[args.command](args)
    except JaxrnnError as e:
        print(f"jaxrnn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxrnn: interrupted; the last saved checkpoint is kept", file=sys.stderr)
        return 130
    except Stopped as e:
        print(f"jaxrnn: {e}", file=sys.stderr)
        return 128 + e.signum


def entry() -> NoReturn:
    """The `jaxrnn` command: `main`, then exit with its status. A command that failed exits at once, whatever
    threads of orbax's (a save that failed) or an abandoned compilation are still doing: its line is out."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if code != 0:
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
