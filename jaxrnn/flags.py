"""The command line's grammar: `build_parser` (every subcommand's flags; `jaxrnn train`'s one per `Config`
field, from its `setting`), the types that check a flag's value, and `config_from_args` (flags -> Config).
Parsing needs no JAX, so `--help` and `--version` answer at once; the commands themselves are cli.py's.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from jaxrnn import __version__
from jaxrnn.config import GROUPS, PRESETS, Config, field_kind, flag
from jaxrnn.errors import JaxrnnError


class _Parser(argparse.ArgumentParser):
    """argparse whose errors end with the project's one-line form and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"jaxrnn: error: {message}; see '{self.prog} --help'\n")


def _number(cast: Any, what: str, ok: Any = lambda v: True, need: str = "") -> Any:
    """An argparse type: `cast` the text (else '... is not {what}'), then require `ok` (else '{need}')."""

    def parse(s: str):
        try:
            v = cast(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not {what}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"{s!r} must be {need}")
        return v

    return parse


_positive_int = _number(int, "an integer", lambda v: v > 0, "a positive integer")
_positive_float = _number(float, "a number", lambda v: 0 < v < math.inf, "a positive finite number")
_non_negative_int = _number(int, "an integer", lambda v: v >= 0, "0 or more")
_port = _number(int, "a port number", lambda v: 0 <= v < 65536, "in [0, 65535]")


def _split(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(f) for f in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not three fractions TRAIN,VAL,TEST such as 0.8,0.1,0.1") from None


def _options(s: str) -> dict[str, float]:
    """NAME=VALUE,... as a dict; a whole number stays an int (a count such as heads), any other a float."""
    out = {}
    for item in s.split(","):
        name, eq, value = item.partition("=")
        try:
            out[name.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            eq = ""
        if not eq or not name.strip():
            raise argparse.ArgumentTypeError(f"{item!r} is not NAME=NUMBER, such as u_max=0.5")
    return out


def _seeds(s: str) -> int | tuple[int, ...]:
    """--seeds: a count, or seeds separated by commas (checked by `run.seed_list`)."""
    try:
        return int(s) if "," not in s else tuple(int(x) for x in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is neither a count nor seeds such as 0,3,7") from None


def _host_port(s: str) -> str:
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{s!r} is not HOST:PORT, such as 10.0.0.1:1234")
    return s


def _step(s: str) -> int | str:
    if s == "best":
        return s
    try:
        return _positive_int(s)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{s!r} is neither 'best' nor a checkpoint's number (a positive epoch, or "
                                         "step of a run by --steps)") from None


def _add_config_flags(t: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """One flag per Config field, in `--help` groups: its type, choices and help from the field's
    `setting`, the default in the help read from the field; ranges are `Config.validate`'s to check.
    Flags default to None (not given), so a preset's or a saved config's values stand."""
    groups = {name: t.add_argument_group(name) for name in GROUPS}
    parse = {int: _number(int, "an integer"), float: _number(float, "a number"), str: str, tuple: _split,
             dict: _options}
    for f in dataclasses.fields(Config):
        meta, kind, value = f.metadata, field_kind(f), f.default
        text = meta["help"].replace("%", "%%")
        if kind is bool:  # --NAME and --no-NAME, so a flag can turn off what a preset or config turned on
            groups[meta["group"]].add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=None,
                                               help=text + f" (default {'on' if value else 'off'})")
            continue
        if value is not None:
            text += f" (default {value:g})" if kind is float else f" (default {value})"
        choices = list(meta["choices"]) if meta["choices"] else None
        names = [flag(meta["alias"]), flag(f.name)] if meta["alias"] else [flag(f.name)]
        groups[meta["group"]].add_argument(*names, dest=f.name, metavar=(meta["alias"] or f.name).upper(),
                                           type=parse[kind], default=None, choices=choices, help=text)
    return groups


STEP_HELP = ("which checkpoint: 'best', or its number, the epoch it was saved at (the optimizer step in a run by "
             "--steps; `jaxrnn runs` lists them) (default: the latest)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="jaxrnn", description="Character-level RNN language models in JAX (d2l's RNN chapters).")
    p.add_argument("--version", action="version", version=f"jaxrnn {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a model and write a run directory")
    t.add_argument("--preset", choices=sorted(PRESETS), help="start from a named config; flags override it")
    t.add_argument("--config", metavar="FILE", help="start from a saved config (a run's config.json); flags "
                   "override it")
    t.add_argument("--quiet", action="store_true", help="no progress on stderr (warnings and errors still)")
    t.add_argument("--json", action="store_true", help="one JSON object per epoch on stdout, and the final "
                   "result as one JSON line")
    groups = _add_config_flags(t)
    run_dir, hosts = groups["run directory"], groups["devices and hosts"]
    run_dir.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/<model>-<time>)")
    run_dir.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint, with its "
                         "config")
    run_dir.add_argument("--force", action="store_true", help="overwrite a run directory that holds another run")
    run_dir.add_argument("--seeds", type=_seeds, metavar="N|S,S,...", help="train N replicas that differ only by "
                         "their seed (--seed and the N - 1 after it), or these seeds, as one compiled program: "
                         "RUN_DIR/seed-K/ is each one's run directory, RUN_DIR/group.json names them, and the "
                         "result gives the spread over them")
    run_dir.add_argument("--time-budget", type=_positive_float, metavar="SECONDS",
                         help="stop at the first checkpoint after this many seconds of training, printing the result "
                         "as at the end; --resume goes on (with a budget of its own, if given)")
    hosts.add_argument("--per-step", action="store_true", help="one jitted call per batch instead of fused chunks")
    hosts.add_argument("--distributed", action="store_true", help="one of several processes (hosts) training "
                       "together through jax.distributed; JAX finds its peers on SLURM, Open MPI and TPU pods, else "
                       "pass the next three; every process needs the same flags and --out on a filesystem they share")
    hosts.add_argument("--coordinator", metavar="HOST:PORT", type=_host_port,
                       help="with --distributed: process 0's address")
    hosts.add_argument("--num-processes", type=_positive_int, help="with --distributed: how many processes take "
                       "part")
    hosts.add_argument("--process-id", type=_non_negative_int, help="with --distributed: this process' index, "
                       "from 0")

    s = sub.add_parser("sample", help="print text from a trained run")
    s.add_argument("--run", metavar="RUN_DIR", required=True, help="run directory written by train")
    s.add_argument("--prefix", help="warm-up text, preprocessed as the run's corpus (default: 'time traveller' for "
                   "The Time Machine, else the corpus' opening words)")
    s.add_argument("--num-preds", type=int, default=50, help="characters to generate (default 50)")
    s.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default); > 0 samples")
    s.add_argument("--top-k", type=_non_negative_int, default=0, help="sample from the k most likely characters only "
                   "(default 0: off, every character)")
    s.add_argument("--top-p", type=float, default=1.0, help="sample from the smallest set of characters whose "
                   "probability reaches p (nucleus sampling; default 1: all)")
    s.add_argument("--num-samples", type=_positive_int, default=1, help="samples to print, one per line (default 1)")
    s.add_argument("--seed", type=_non_negative_int, default=0, help="seed for sampling (default 0)")
    s.add_argument("--step", type=_step, default=None, help=STEP_HELP)

    e = sub.add_parser("eval", help="print perplexity and bits per character of a trained run on a file")
    e.add_argument("--run", metavar="RUN_DIR", required=True, help="run directory written by train")
    e.add_argument("--data", metavar="FILE", help="text file, preprocessed as the run's corpus (default: a part "
                   "of the run's corpus, see --part)")
    e.add_argument("--part", choices=["val", "test"], default="val",
                   help="without --data: the run's validation (default) or test part")
    e.add_argument("--step", type=_step, default=None, help=STEP_HELP)

    r = sub.add_parser("runs", help="list the run directories under a directory, with their best val perplexity")
    r.add_argument("root", nargs="?", default=".", help="where to look (default: the current directory)")
    r.add_argument("--all", action="store_true", help="also list each replica of a group (--seeds) as a run")

    sw = sub.add_parser("sweep", help="train a grid of settings times seeds (points that differ only by lr, clip, "
                        "weight decay or sigma as one program) and print every point's spread, best first")
    sw.add_argument("--preset", choices=sorted(PRESETS), help="start from a named config; flags override it")
    sw.add_argument("--config", metavar="FILE", help="start from a saved config; flags override it")
    sw.add_argument("--grid", action="append", required=True, metavar="NAME=V1,V2,...",
                    help="a setting of jaxrnn train and its values (repeat for more; the points are every "
                    "combination), e.g. --grid lr=0.5,1,2 --grid hidden=32,64")
    sw.add_argument("--seeds", type=_seeds, default=1, metavar="N|S,S,...", help="seeds of every point (default 1)")
    sw.add_argument("--out", metavar="DIR", required=True, help="the sweep's directory: sweep.json, sweep.png and "
                    "a group directory per point (point-K/); the same command again goes on where it stopped")
    sw.add_argument("--force", action="store_true", help="replace a sweep that DIR holds")
    sw.add_argument("--quiet", action="store_true", help="no progress on stderr")
    sw.add_argument("--json", action="store_true", help="the points' rows as one JSON line instead of the table")
    _add_config_flags(sw)

    pl = sub.add_parser("plot", help="draw the perplexity curves of one or more runs into one figure")
    pl.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by train")
    pl.add_argument("--out", metavar="FILE", default="curves.png", help="image to write (default curves.png)")
    pl.add_argument("--log", action="store_true", help="log-scale perplexity axis")

    sv = sub.add_parser("serve", help="serve trained runs over HTTP (OpenAI's completions API and a page)")
    sv.add_argument("--run", metavar="RUN_DIR", action="append", required=True, help="run directory written by "
                    "train; repeat to serve several, each named by its directory")
    sv.add_argument("--step", type=_step, default=None, help=STEP_HELP)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                    "only; 0.0.0.0 serves every network)")
    sv.add_argument("--port", type=_port, default=8000, help="port to listen on (default 8000; 0: any free one)")
    sv.add_argument("--max-prompt", type=_positive_int, default=4096, help="characters of one prompt (default 4096)")
    sv.add_argument("--max-tokens", type=_positive_int, default=2000, help="characters one choice may ask for "
                    "(default 2000)")
    sv.add_argument("--max-n", type=_positive_int, help="choices per request (default 16, or --max-batch if less)")
    sv.add_argument("--max-batch", type=_positive_int, default=32, help="choices decoded as one call (default 32; "
                    "on CPUs up to 32 rows compute a row's bits as jaxrnn sample does)")

    ex = sub.add_parser("export", help="write a run's greedy decoder as a jax.export program with its params, to "
                        "run without jaxrnn")
    ex.add_argument("--run", metavar="RUN_DIR", required=True, help="run directory written by train")
    ex.add_argument("--step", type=_step, default=None, help=STEP_HELP)
    ex.add_argument("--out", metavar="DIR", required=True, help="directory to write (decoder.jaxexport, "
                    "params.npz, state.npz, model.json)")

    # bench's flags are its own (jaxrnn/bench.py, which imports JAX): parsed by `bench_parser` when it runs
    sub.add_parser("bench", help="benchmark jaxrnn against d2l's way and PyTorch", add_help=False)
    return p


def bench_parser() -> argparse.ArgumentParser:
    """`jaxrnn bench`'s flags, built only for that command: the rest of the CLI answers without JAX."""
    from jaxrnn.bench import add_arguments

    b = _Parser(prog="jaxrnn bench", description="benchmark jaxrnn against d2l's way and PyTorch")
    add_arguments(b)
    return b


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line as a Namespace (exit 2 on a bad one); `bench`'s flags by `bench_parser`."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        return bench_parser().parse_args(rest, namespace=args)
    if rest:  # refused by the command's own parser, whose usage and help it names
        parser._subparsers._group_actions[0].choices[args.command].error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The Config fields whose flags were given."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if getattr(args, f.name) is not None}


def config_from_args(args: argparse.Namespace) -> Config:
    if args.split is not None and (args.num_train is not None or args.num_val is not None):
        raise JaxrnnError("--split sets the train and validation parts by fraction; drop --num-train/--num-val")
    if args.preset and args.config:
        raise JaxrnnError("--preset and --config both name a starting config; drop one")
    given = _given(args)
    if not (args.preset or args.config):  # the reading nothing states is the corpus' own
        cfg = Config(**given)
    else:
        base = PRESETS[args.preset] if args.preset else Config.load(args.config)
        cfg = base.replace(**given)  # a recipe's reading stands, whatever text it is given
    if "epochs" in given and cfg.steps is not None:
        where = ("--steps" if "steps" in given else f"--preset {args.preset}" if args.preset
                 else f"--config {args.config}")
        raise JaxrnnError(f"--epochs {cfg.epochs} would be ignored: this run trains for {cfg.steps} optimizer steps "
                          f"({where}); drop --epochs, or give the length as --steps N")
    return cfg
