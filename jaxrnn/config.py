"""One typed configuration shared by the CLI and the Python API; its defaults are the seed config."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxrnn.errors import ConfigError, SettingError


@dataclass(frozen=True)
class Source:
    """A corpus known by name (`--data NAME`): its file name in $JAXRNN_DATA_DIR or the cache, where it is
    downloaded from, its sha1, and how it is read unless told otherwise."""

    file: str
    url: str
    sha1: str
    preprocessing: str = "d2l"
    split: tuple[float, float, float] | None = None  # None: d2l's window counts


CORPORA = {
    # H. G. Wells' The Time Machine as d2l serves it (public domain): the chapters' corpus and the default
    "timemachine": Source("timemachine.txt", "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt",
                          "090b5e7e70c295757f55df93cb0a180b9691891a"),
    # Tiny Shakespeare from karpathy/char-rnn, read as nanoGPT reads it: raw text, first 90% train, last 10% val
    "tinyshakespeare": Source("tinyshakespeare.txt",
                              "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                              "04486597058d11dcc2c556b1d0433891eb639d2e", "none", (0.9, 0.1, 0.0)),
}
DEFAULT_CORPUS = "timemachine"


def source_of(data: str | os.PathLike | None) -> Source | None:
    """The named corpus `--data` means (None: The Time Machine), or None for a file path."""
    return CORPORA[DEFAULT_CORPUS] if data is None else CORPORA.get(str(data))


SHA1_MAX_BYTES = 1 << 26  # files up to this size are checked against the named corpora (all far smaller)


def reading_of(data: str | os.PathLike | None) -> Source | None:
    """The named corpus whose reading `--data` takes: the one it names, or the one whose bytes a file
    holds (a user's own copy of Tiny Shakespeare is read as Tiny Shakespeare is); None for another text."""
    named = source_of(data)
    if named is not None or not isinstance(data, (str, os.PathLike)):
        return named
    try:
        st = os.stat(data)
    except (OSError, ValueError):  # not a file (yet): find_corpus says so when the run reads it
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > SHA1_MAX_BYTES:
        return None
    digest = _file_sha1(str(Path(data).resolve()), st.st_size, st.st_mtime_ns)
    return next((s for s in CORPORA.values() if s.sha1 == digest), None)


def sha1_of(path: str | os.PathLike) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


@functools.lru_cache(maxsize=16)
def _file_sha1(path: str, size: int, mtime_ns: int) -> str | None:
    """sha1 of a file's bytes, once per version of the file (its size and mtime are part of the key)."""
    try:
        return sha1_of(path)
    except OSError:
        return None


MODELS = {"scratch": ("rnn", "scratch"), "concise": ("rnn", "flax")}  # the chapters' names -> (cell, impl)
# cells.CELLS, the registry, defines each
CELLS = ("rnn", "lstm", "gru", "gru-d2l", "mingru", "indrnn", "minlstm", "lru", "rglru", "slstm")
IMPLS = ("scratch", "flax")
GRU_FORMS = {"after": "gru", "before": "gru-d2l"}  # --gru-reset, the older name of the GRU's two cells
PRECISIONS = ("highest", "high", "default")
DTYPES = ("float32", "bfloat16")
KERNELS = ("auto", "scan", "pallas")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine")
PREPROCESSING = ("d2l", "none")
BATCHINGS = ("random", "sequential")
EVALS = ("windows", "stream")  # how a part is read to measure its loss (batching.eval_protocol says in full)
WINDOW_COUNTS = "d2l-counts"  # `split` stated as d2l's window counts (--num-train/--num-val); held as None
RUN_INFO = ("data_sha1", "versions", "eval_protocol")  # what config.json records beside the settings
GROUPS = ("model", "data", "optimisation", "run directory", "devices and hosts")  # of `jaxrnn train --help`
# what a number must be, checked by `validate`: (test, the words after 'must be', the advice)
BOUNDS = {
    "positive": (lambda v: v > 0, "a positive {noun}", "pass a value > 0"),
    "non-negative": (lambda v: v >= 0, "{a_noun} >= 0", "pass a value >= 0"),
    "fraction": (lambda v: 0 <= v < 1, "in [0, 1)", "pass a value in [0, 1)"),
    "seed": (lambda v: 0 <= v < 2**31, "in [0, 2**31)", "pass a seed from 0 to 2147483647"),  # an int32 on device
}


def setting(default: Any, group: str, help: str, bound: str | None = None, choices: tuple[str, ...] | None = None,
            alias: str | None = None) -> Any:
    """A Config field and its `jaxrnn train` flag: the flag's `--help` group and text (the field's
    default is added unless it is None, which the text explains), the range of a number
    (`BOUNDS`) or the names a setting takes, which `validate` checks; `alias` a clearer flag name,
    shown first (`--window` for d2l's `--num-steps`)."""
    return field(default=default, metadata={"group": group, "help": help, "bound": bound, "choices": choices,
                                            "alias": alias})


@dataclass(frozen=True)
class Config:
    """Everything that defines a run, saved as `config.json` in every run and checkpoint; its defaults
    are the seed config. Each field is a `jaxrnn train` flag (`--num-steps` for `num_steps`)."""

    cell: str | None = setting(None, "model", "recurrent cell, from jaxrnn/cells.py's registry: rnn is the tanh cell "
                               "(default rnn, or what --model names)", choices=CELLS)
    impl: str | None = setting(None, "model", "scratch: pure functions; flax: nn.scan over Flax's cell (default "
                               "scratch)", choices=IMPLS)
    model: str | None = setting(None, "model", "the chapters' names, read into --cell and --impl and not kept: "
                                "scratch is --cell rnn --impl scratch, concise --impl flax", choices=tuple(MODELS))
    gru_reset: str | None = setting(None, "model", "the GRU's form, read into --cell and not kept: 'after' is "
                                    "--cell gru (the reset gate on h W_hn + b_hn, as Flax and cuDNN), 'before' "
                                    "--cell gru-d2l (on h, as d2l)", choices=tuple(GRU_FORMS))
    cell_options: dict[str, float] | None = setting(
        None, "model", "the cell's own options, NAME=VALUE,... (e.g. --cell indrnn --cell-options u_min=0,u_max=0.5, "
        "the init range of its recurrent weights; jaxrnn/cells.py's registry lists each cell's, with their "
        "defaults)")
    epochs: int = setting(100, "optimisation", "training epochs", "positive")
    hidden: int = setting(32, "model", "hidden units", "positive")
    batch_size: int = setting(1024, "optimisation", "windows per batch", "positive")
    num_steps: int = setting(32, "data", "characters per training window, the length of truncated BPTT (d2l's "
                             "num_steps; not --steps, which counts optimizer steps)", "positive", alias="window")
    lr: float = setting(1.0, "optimisation", "learning rate", "positive")
    clip: float = setting(1.0, "optimisation", "global gradient-norm clip", "positive")
    seed: int = setting(0, "optimisation", "seed of the init, the data order and dropout", "seed")
    sigma: float = setting(0.01, "model", "std of the scratch model's normal init (d2l's sigma)", "positive")
    num_train: int = setting(10000, "data", "training windows (d2l's count)", "positive")
    num_val: int = setting(5000, "data", "validation windows, the next ones", "positive")
    save_every: int | None = setting(None, "run directory", "epochs per compiled chunk and checkpoint (default "
                                     "10), or with --steps optimizer steps between checkpoints (default: at every "
                                     "evaluation)", "positive")
    steps: int | None = setting(None, "optimisation", "train for this many optimizer steps instead of --epochs "
                                "(epochs run on into each other in the same order); --save-every then counts steps",
                                "positive")
    eval_every: int | None = setting(None, "optimisation", "with --steps: optimizer steps between evaluations "
                                     "(default steps / 10)", "positive")
    eval_batches: int | None = setting(None, "optimisation", "validate on this many batches, the same seeded sample "
                                       "each time (nanoGPT's eval_iters), instead of the whole validation part",
                                       "positive")
    unroll: int | None = setting(None, "model", "lax.scan unroll, clipped to --num-steps (default: the measured "
                                 "best per backend)", "positive")
    precision: str = setting("highest", "model", "matmul precision; highest is true float32 everywhere",
                             choices=PRECISIONS)
    kernel: str = setting("auto", "model", "how a layer's time loop runs: scan (lax.scan, compiled by XLA), "
                          "pallas (one Pallas kernel for the loop, one for its gradient, one for greedy decoding, "
                          "where W_hh fits in 192 KiB; wider, a kernel per step; the scratch tanh RNN, LSTM and GRU "
                          "at power-of-two widths; on a CPU in interpret mode, slow, for tests), or auto: pallas on "
                          "GPUs where W_hh fits (not yet for d2l's GRU form), scan elsewhere: the measured best",
                          choices=KERNELS)
    skip_nonfinite: bool = setting(False, "optimisation", "skip steps whose loss is nan or inf instead of stopping "
                                   "the run")
    dtype: str = setting("float32", "model", "compute dtype of the recurrence and head; params stay float32",
                         choices=DTYPES)
    layers: int = setting(1, "model", "stacked recurrent layers", "positive")
    embed: int = setting(0, "model", "input embedding width; 0: one-hot inputs, as the chapters", "non-negative")
    tie: bool = setting(False, "model", "use the input embedding as the output layer (needs --embed equal to "
                        "--hidden)")
    dropout: float = setting(0.0, "model", "dropout rate on embeddings and every layer's outputs, in training only",
                             "fraction")
    optimizer: str = setting("sgd", "optimisation", "sgd (the chapters'), adam (L2 weight decay) or adamw "
                             "(decoupled weight decay)", choices=OPTIMIZERS)
    weight_decay: float = setting(0.0, "optimisation", "weight decay", "non-negative")
    schedule: str = setting("constant", "optimisation", "learning rate over the run: constant, or cosine (decay "
                            "to 0)", choices=SCHEDULES)
    warmup: int = setting(0, "optimisation", "optimizer steps of linear learning-rate warm-up from 0", "non-negative")
    devices: int | None = setting(None, "devices and hosts", "data-parallel devices (default all; on a CPU one per "
                                  "core)", "positive")
    data: str | None = setting(None, "data", "a corpus file, or a name: timemachine (default) or tinyshakespeare "
                               "(raw text, first 90% train, last 10% validation, as nanoGPT), from "
                               "$JAXRNN_DATA_DIR, the cache, or downloaded")
    preprocessing: str | None = setting(None, "data", "d2l: letters only, lower-case; none: the text as it is "
                                        "(default: the named corpus' own, none for tinyshakespeare; else d2l)",
                                        choices=PREPROCESSING)
    split: tuple[float, float, float] | None = setting(
        None, "data", "TRAIN,VAL,TEST fractions of the text, e.g. 0.8,0.1,0.1, in place of --num-train/--num-val "
        "(default: the named corpus' own, 0.9,0.1,0 for tinyshakespeare); a test part gets its perplexity and bpc "
        "printed at the end")
    batching: str = setting("random", "data", "random windows (d2l 1.0) or sequential streams with the hidden state "
                            "carried between batches (truncated BPTT, reset each epoch)", choices=BATCHINGS)
    eval: str = setting("windows", "data", "how validation and test parts are read: windows (d2l's counts at stride "
                        "1 as the chapters, --split parts in non-overlapping windows, each token once from an empty "
                        "state) or stream (one pass with the state carried, each token with its whole left context)",
                        choices=EVALS)
    tensorboard: bool = setting(False, "run directory", "also log to RUN_DIR/tb for TensorBoard (needs the "
                                "tensorboard extra: tensorboardX)")
    curves: bool = setting(True, "run directory", "draw RUN_DIR/curves.png at each checkpoint (--no-curves saves "
                           "matplotlib's second of CPU in short runs)")

    def __post_init__(self) -> None:
        cell, impl = resolve_model(self.model, self.cell, self.impl)
        object.__setattr__(self, "cell", cell)
        object.__setattr__(self, "impl", impl)
        object.__setattr__(self, "model", None)
        object.__setattr__(self, "cell", resolve_gru_form(self.cell, self.gru_reset))
        object.__setattr__(self, "gru_reset", None)
        if isinstance(self.cell_options, dict) and not self.cell_options:  # none given: the cell's defaults
            object.__setattr__(self, "cell_options", None)
        if isinstance(self.split, (list, tuple)):  # a JSON list from config.json reads as the same tuple
            object.__setattr__(self, "split", tuple(self.split))
        if isinstance(self.steps, int) and self.steps > 0:  # defaults only where not given: validate checks what was
            if self.eval_every is None:
                object.__setattr__(self, "eval_every", max(self.steps // 10, 1))
            if self.save_every is None and _positive_int(self.eval_every):
                object.__setattr__(self, "save_every", self.eval_every)
        elif self.save_every is None:
            object.__setattr__(self, "save_every", 10)
        # the reading (preprocessing, split) a config does not state is its corpus' own: a named corpus' (or a
        # file holding one's bytes), else d2l's; once resolved it is stated, and `replace` keeps it
        counts = self.split == WINDOW_COUNTS  # stated: d2l's window counts
        if counts:
            object.__setattr__(self, "split", None)
        if self.preprocessing is None or (self.split is None and not counts):
            source = reading_of(self.data)
            if self.preprocessing is None:
                object.__setattr__(self, "preprocessing", source.preprocessing if source else "d2l")
            if self.split is None and not counts and source is not None:
                object.__setattr__(self, "split", source.split)
        validate(self)

    @property
    def unit(self) -> str:
        """What the run counts: 'step' when trained by `steps`, else 'epoch' (records, checkpoints, --step)."""
        return "epoch" if self.steps is None else "step"

    @property
    def length(self) -> int:
        """The run's length in its unit."""
        return self.epochs if self.steps is None else self.steps

    @property
    def name(self) -> str:
        """'scratch' or 'concise' for the chapters' models, else e.g. 'lstm-flax'."""
        chapters = {v: k for k, v in MODELS.items()}
        return chapters.get((self.cell, self.impl), f"{self.cell}-{self.impl}")

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated again); `model=` replaces the cell and impl. The
        reading stays unless changed: another `data=` is read as this config reads its text (a preset is a
        recipe: the text may change, not how it is read); `preprocessing=None, split=None` take the new
        corpus' own."""
        if changes.get("model") is not None:
            changes = {"cell": None, "impl": None, **changes}
        if "steps" in changes and changes["steps"] != self.steps:  # intervals counted in the new unit
            changes = {"save_every": None, "eval_every": None, **changes}
        return dataclasses.replace(self, **{"split": self.split or WINDOW_COUNTS, **changes})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        del d["model"], d["gru_reset"]  # always None: read into cell and impl
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Build from a saved dict, refusing keys this version does not know (a run's `config.json`
        also records its data and library versions: `RUN_INFO`, read by the run, not the config)."""
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k not in RUN_INFO}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; remove them or upgrade jaxrnn")
        if "split" in d and d["split"] is None:  # stated, as every saved config states it: d2l's window counts
            d = {**d, "split": WINDOW_COUNTS}
        return cls(**d)

    def save(self, path: Path, **info: Any) -> None:
        """Write config.json atomically (write a temp file, then rename), with `info` (RUN_INFO keys)."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({**self.to_dict(), **info}, indent=2, allow_nan=False) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Config:
        """A config saved as JSON (a run's config.json, or one written by hand); whatever is wrong with the
        file, or with a value in it, is refused naming the file and the key."""
        path, written = Path(path), "pass a config.json written by jaxrnn"
        try:
            d = json.loads(path.read_bytes().decode("utf-8"))
        except OSError as e:
            raise ConfigError(f"cannot read config {path} ({e.strerror}); {written}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config {path} is not UTF-8 text ({e.reason} at byte {e.start}); {written}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"config {path} is not JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                              f"{written}") from None
        if not isinstance(d, dict):
            kind = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false"}
            raise ConfigError(f"config {path} holds {kind.get(type(d), 'null')}, not an object of settings; "
                              f"{written}")
        try:
            return cls.from_dict(d)
        except SettingError as e:
            raise ConfigError(f"config {path}: {e.key!r} {e.problem}; fix it in {path} ({e.advice})") from None
        except ConfigError as e:
            raise ConfigError(f"config {path}: {e}") from None


def resolve_model(model: str | None, cell: str | None, impl: str | None) -> tuple[str, str]:
    """(cell, impl) from the chapters' `model` name and/or explicit ones; a contradiction is refused."""
    if model is None:
        return cell or "rnn", impl or "scratch"
    if not isinstance(model, str) or model not in MODELS:
        raise SettingError("model", f"{model!r} is unknown", f"use one of {', '.join(MODELS)}")
    want_cell, want_impl = MODELS[model]
    for flag, given, want in (("--cell", cell, want_cell), ("--impl", impl, want_impl)):
        if given is not None and given != want:
            raise ConfigError(f"--model {model} means --cell {want_cell} --impl {want_impl}, not {flag} {given}; "
                              f"drop --model or {flag}")
    return want_cell, want_impl


def resolve_gru_form(cell: str, gru_reset: str | None) -> str:
    """The cell `--gru-reset` names: 'before' is gru-d2l, 'after' gru (a config.json written before gru-d2l
    was a cell of its own says 'after' whatever its cell, which stays)."""
    if gru_reset is None:
        return cell
    if not isinstance(gru_reset, str) or gru_reset not in GRU_FORMS:
        raise SettingError("gru_reset", f"{gru_reset!r} is unknown", f"use one of {', '.join(GRU_FORMS)}")
    want = GRU_FORMS[gru_reset]
    if cell in ("gru", want):
        return want
    if gru_reset == "after" and cell != "gru-d2l":
        return cell
    raise ConfigError(f"--gru-reset {gru_reset} names --cell {want}, not --cell {cell}; drop --gru-reset")


def flag(name: str) -> str:
    """The `jaxrnn train` flag of a Config field: `--num-steps` for `num_steps`."""
    return "--" + name.replace("_", "-")


def field_kind(f: dataclasses.Field) -> type:
    """The type a field holds besides None, read from its annotation (`int | None`): bool, int, float,
    str, tuple (of floats) or dict (names to numbers); another annotation has no flag form and is refused."""
    hint = str(f.type).split(" | ")[0]
    kinds = {"bool": bool, "int": int, "float": float, "str": str, "tuple[float, float, float]": tuple,
             "dict[str, float]": dict}
    if hint not in kinds:
        raise TypeError(f"Config.{f.name}: annotation {f.type!r} has no flag form; use one of {', '.join(kinds)}")
    return kinds[hint]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def validate(cfg: Config) -> None:
    """Refuse settings that cannot train, with a message that says which flag to fix: every field's
    choices and bounds (its `setting`), then the settings that depend on each other."""
    for f in dataclasses.fields(cfg):
        v, meta, kind = getattr(cfg, f.name), f.metadata, field_kind(f)
        if v is None and f.default is None:
            continue
        if meta["choices"] and v not in meta["choices"]:
            raise SettingError(f.name, f"{v!r} is unknown", f"use one of {', '.join(meta['choices'])}")
        if kind is bool and not isinstance(v, bool):
            raise SettingError(f.name, f"must be true or false, got {v!r}", "pass true or false")
        if kind is str and not isinstance(v, str):
            raise SettingError(f.name, f"must be a string, got {v!r}", "pass it as text"
                               + (": a file path or a corpus name" if f.name == "data" else ""))
        if meta["bound"]:
            ok, need, advice = BOUNDS[meta["bound"]]
            numbers = (int,) if kind is int else (int, float)
            if (isinstance(v, bool) or not isinstance(v, numbers) or (isinstance(v, float) and not math.isfinite(v))
                    or not ok(v)):
                noun = "integer" if kind is int else "finite number"
                words = need.format(noun=noun, a_noun=("an " if kind is int else "a ") + noun)
                raise SettingError(f.name, f"must be {words}, got {v!r}", advice)
    if cfg.cell_options is not None and not (
            isinstance(cfg.cell_options, dict) and all(isinstance(k, str) and _finite(v) for k, v in
                                                       cfg.cell_options.items())):
        raise SettingError("cell_options", f"must be names with numbers, got {cfg.cell_options!r}",
                           "e.g. --cell-options u_min=0,u_max=0.5")
    if cfg.steps is None and cfg.eval_every is not None:
        raise ConfigError("--eval-every counts optimizer steps of a run trained by --steps; pass --steps N, or drop "
                          "--eval-every (a run by epochs evaluates after each)")
    if cfg.steps is not None and cfg.save_every % cfg.eval_every:
        raise ConfigError(f"--save-every {cfg.save_every} is not a multiple of --eval-every {cfg.eval_every}: a "
                          f"checkpoint is saved after an evaluation; pass --save-every {cfg.eval_every * 2} or so")
    if cfg.tie and cfg.embed != cfg.hidden:
        raise ConfigError(f"--tie shares the input embedding with the output layer, which needs --embed equal to "
                          f"--hidden ({cfg.embed} != {cfg.hidden}); pass --embed {cfg.hidden} or drop --tie")
    if cfg.split is not None:
        fr = cfg.split
        if (not isinstance(fr, tuple) or len(fr) != 3
                or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 <= f <= 1 for f in fr)
                or fr[0] <= 0 or fr[1] <= 0 or not math.isclose(sum(fr), 1.0, abs_tol=1e-6)):
            raise SettingError("split", f"must be three fractions TRAIN,VAL,TEST in [0, 1] summing to 1, train and "
                               f"validation above 0, got {fr!r}", "e.g. --split 0.8,0.1,0.1")


# How a preset reads its text is part of it, stated: given another file (`--data`), a preset reads it the same way.
D2L_READING = dict(preprocessing="d2l", split=WINDOW_COUNTS, eval="windows")  # the chapters': letters, 10000 + 5000
NANOGPT_READING = dict(preprocessing="none", split=(0.9, 0.1, 0.0), eval="windows")  # raw text, 90% / 10%, blocks

PRESETS: dict[str, Config] = {
    "d2l-scratch": Config(model="scratch", **D2L_READING),
    "d2l-concise": Config(model="concise", **D2L_READING),
    # d2l's LSTM and GRU sections (10.1, 10.2): the scratch cells, hidden 32, SGD lr 4, 50 epochs
    "d2l-lstm": Config(cell="lstm", impl="scratch", lr=4.0, epochs=50, **D2L_READING),
    "d2l-gru": Config(cell="gru-d2l", impl="scratch", lr=4.0, epochs=50, **D2L_READING),
    # larger starting points (Flax cells, embeddings, dropout, AdamW with a cosine schedule); for a
    # corpus larger than The Time Machine pass --split; not tuned figures
    "lstm-2x256": Config(cell="lstm", impl="flax", layers=2, hidden=256, embed=64, dropout=0.2, optimizer="adamw",
                         lr=3e-3, weight_decay=0.01, schedule="cosine", warmup=100, batch_size=128, num_steps=64,
                         epochs=20, save_every=2, **D2L_READING),
    "gru-2x512": Config(cell="gru", impl="flax", layers=2, hidden=512, embed=128, dropout=0.3, optimizer="adamw",
                        lr=2e-3, weight_decay=0.01, schedule="cosine", warmup=200, batch_size=128, num_steps=128,
                        epochs=20, save_every=2, **D2L_READING),
    # Tiny Shakespeare in about 70 s on 2 CPU cores, nanoGPT's CPU recipe's time (tools/race.py): a Flax GRU
    # (its lecun/orthogonal init learns far faster than d2l's 0.01-normal one), random 64-character windows
    # from a zero state as the blocks it is measured on, a high Adam rate annealed to 0 (docs/results.md)
    "shakespeare-cpu": Config(data="tinyshakespeare", cell="gru", impl="flax", hidden=192, batch_size=64,
                              num_steps=64, optimizer="adam", lr=1.2e-2, clip=5.0, schedule="cosine", warmup=30,
                              steps=1550, eval_every=310, eval_batches=10, **NANOGPT_READING),
    # the best found for 10 minutes on 2 CPU cores: two GRU layers of 224, light dropout (docs/results.md)
    "shakespeare-10min": Config(data="tinyshakespeare", cell="gru", impl="flax", layers=2, hidden=224, dropout=0.15,
                                batch_size=64, num_steps=64, optimizer="adam", lr=9e-3, clip=5.0, schedule="cosine",
                                warmup=100, steps=4000, eval_every=500, eval_batches=10, **NANOGPT_READING),
}
