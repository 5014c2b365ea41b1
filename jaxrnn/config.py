"""One typed configuration shared by the CLI and the Python API; its defaults are the seed config."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxrnn.data import BATCHINGS, EVALS, PREPROCESSING, source_of
from jaxrnn.errors import ConfigError

MODELS = {"scratch": ("rnn", "scratch"), "concise": ("rnn", "flax")}  # the chapters' names -> (cell, impl)
CELLS = ("rnn", "lstm", "gru")
IMPLS = ("scratch", "flax")
GRU_RESETS = ("after", "before")
PRECISIONS = ("highest", "high", "default")
DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine")
RUN_INFO = ("data_sha1", "versions", "eval_protocol")  # what config.json records beside the settings
# the settings that take one of a few names: Config field -> the names (the CLI's --flag choices)
CHOICES = {"cell": CELLS, "impl": IMPLS, "gru_reset": GRU_RESETS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
           "preprocessing": PREPROCESSING, "batching": BATCHINGS, "eval": EVALS, "precision": PRECISIONS,
           "dtype": DTYPES}


@dataclass(frozen=True)
class Config:
    """Everything that defines a run. Saved as `config.json` in every run and checkpoint."""

    cell: str | None = None  # 'rnn' (tanh), 'lstm' or 'gru'; None: 'rnn', or what `model` names
    impl: str | None = None  # 'scratch' (pure functions) or 'flax' (nn.scan over Flax's cell); None: 'scratch'
    model: str | None = None  # the chapters' names, read into cell and impl and not kept: 'scratch' is
    #                           rnn/scratch, 'concise' rnn/flax; a cell or impl that contradicts it is refused
    gru_reset: str = "after"  # scratch GRU: reset gate on (h W_hn + b_hn) as Flax/cuDNN, or 'before' as d2l
    epochs: int = 100
    hidden: int = 32
    batch_size: int = 1024
    num_steps: int = 32
    lr: float = 1.0
    clip: float = 1.0
    seed: int = 0
    sigma: float = 0.01  # std of the scratch model's normal init (d2l's sigma)
    num_train: int = 10000  # windows used for training (d2l's TimeMachine default)
    num_val: int = 5000  # the next windows, used for validation
    save_every: int | None = None  # epochs per compiled chunk and checkpoint (None: 10), or with `steps`
    #                                optimizer steps between checkpoints (None: every evaluation)
    steps: int | None = None  # train by optimizer steps instead of `epochs` (None: by epochs)
    eval_every: int | None = None  # with `steps`: optimizer steps between evaluations (None: steps // 10)
    eval_batches: int | None = None  # validate on this many batches, a fixed seeded sample (None: the whole part)
    unroll: int | None = None  # lax.scan unroll, clipped to num_steps; None: the measured best per backend
    precision: str = "highest"  # jax.default_matmul_precision: 'highest' is true float32 everywhere
    skip_nonfinite: bool = False  # drop updates whose loss/gradients are nan or inf instead of stopping
    dtype: str = "float32"  # compute dtype of the recurrence and head; params stay float32
    layers: int = 1  # stacked recurrent layers
    embed: int = 0  # width of an input embedding table; 0: one-hot inputs, as the chapters
    tie: bool = False  # the head is the embedding's transpose (needs embed == hidden)
    dropout: float = 0.0  # training only: on embedded inputs and every layer's output states
    optimizer: str = "sgd"  # 'sgd' (the chapters'), 'adam' (L2 weight decay) or 'adamw' (decoupled)
    weight_decay: float = 0.0
    schedule: str = "constant"  # learning rate over the run: 'constant' or 'cosine' (decay to 0)
    warmup: int = 0  # optimizer steps of linear warm-up from 0 to lr
    devices: int | None = None  # data-parallel devices; None: all local ones (parallel.py)
    data: str | None = None  # a corpus file, or a name of data.CORPORA; None: The Time Machine
    preprocessing: str | None = None  # 'd2l': letters only, lower-case; 'none': the text as it is; None: the
    #                                   named corpus' own ('none' for tinyshakespeare), else 'd2l'
    split: tuple[float, float, float] | None = None  # train/val/test fractions; None: num_train, num_val (or
    #                                                  the named corpus' own: 0.9,0.1,0 for tinyshakespeare)
    batching: str = "random"  # 'random' windows (d2l 1.0) or 'sequential' streams with the state carried
    eval: str = "windows"  # 'windows': d2l's counts at stride 1, --split parts in blocks; 'stream': state carried
    tensorboard: bool = False  # also log to RUN_DIR/tb with tensorboardX
    curves: bool = True  # draw RUN_DIR/curves.png (matplotlib costs about 1 s of CPU per process)

    def __post_init__(self) -> None:
        cell, impl = resolve_model(self.model, self.cell, self.impl)
        object.__setattr__(self, "cell", cell)
        object.__setattr__(self, "impl", impl)
        object.__setattr__(self, "model", None)
        if isinstance(self.split, (list, tuple)):  # a JSON list from config.json reads as the same tuple
            object.__setattr__(self, "split", tuple(self.split))
        if isinstance(self.steps, int) and self.steps > 0:
            object.__setattr__(self, "eval_every", self.eval_every or max(self.steps // 10, 1))
            object.__setattr__(self, "save_every", self.save_every or self.eval_every)
        else:
            object.__setattr__(self, "save_every", self.save_every or 10)
        source = source_of(self.data)  # a named corpus brings how it is read, unless told otherwise
        if self.preprocessing is None:
            object.__setattr__(self, "preprocessing", source.preprocessing if source else "d2l")
        if self.split is None and source is not None:
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
        """A copy with some fields changed (validated again); `model=` replaces the cell and impl, and
        another `data=` reads its corpus as that corpus is read by default unless told otherwise."""
        if changes.get("model") is not None:
            changes = {"cell": None, "impl": None, **changes}
        if "data" in changes and changes["data"] != self.data:
            changes = {"preprocessing": None, "split": None, **changes}
        if "steps" in changes and changes["steps"] != self.steps:  # intervals counted in the new unit
            changes = {"save_every": None, "eval_every": None, **changes}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        del d["model"]  # always None: read into cell and impl
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
        return cls(**d)

    def save(self, path: Path, **info: Any) -> None:
        """Write config.json atomically (write a temp file, then rename), with `info` (RUN_INFO keys)."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({**self.to_dict(), **info}, indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Config:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise ConfigError(f"cannot read config {path}: {e}; pass a config.json written by jaxrnn") from None


def resolve_model(model: str | None, cell: str | None, impl: str | None) -> tuple[str, str]:
    """(cell, impl) from the chapters' `model` name and/or explicit ones; a contradiction is refused."""
    if model is None:
        return cell or "rnn", impl or "scratch"
    if model not in MODELS:
        raise ConfigError(f"--model {model!r} is unknown; use one of {', '.join(MODELS)}")
    want_cell, want_impl = MODELS[model]
    for flag, given, want in (("--cell", cell, want_cell), ("--impl", impl, want_impl)):
        if given is not None and given != want:
            raise ConfigError(f"--model {model} means --cell {want_cell} --impl {want_impl}, not {flag} {given}; "
                              f"drop --model or {flag}")
    return want_cell, want_impl


def validate(cfg: Config) -> None:
    """Refuse settings that cannot train, with a message that says which flag to fix."""
    for name, allowed in CHOICES.items():
        flag, v = "--" + name.replace("_", "-"), getattr(cfg, name)
        if v not in allowed:
            raise ConfigError(f"{flag} {v!r} is unknown; use one of {', '.join(allowed)}")
    if cfg.gru_reset != "after" and (cfg.cell, cfg.impl) != ("gru", "scratch"):
        raise ConfigError(f"--gru-reset {cfg.gru_reset} applies to --cell gru --impl scratch only "
                          "(Flax's GRUCell resets after the matmul); drop --gru-reset")
    positive_ints = {
        "epochs": "--epochs",
        "hidden": "--hidden",
        "batch_size": "--batch-size",
        "num_steps": "--num-steps",
        "num_train": "--num-train",
        "num_val": "--num-val",
        "save_every": "--save-every",
        "unroll": "--unroll",
        "devices": "--devices",
        "layers": "--layers",
        "embed": "--embed",
        "warmup": "--warmup",
        "steps": "--steps",
        "eval_every": "--eval-every",
        "eval_batches": "--eval-batches",
    }
    for name, flag in positive_ints.items():
        v = getattr(cfg, name)
        if name in ("unroll", "devices", "steps", "eval_every", "eval_batches") and v is None:
            continue
        least = 0 if name in ("embed", "warmup") else 1
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            what = "a positive integer" if least else "an integer >= 0"
            raise ConfigError(f"{flag} must be {what}, got {v!r}; pass a value >= {least}")
    if cfg.steps is None and cfg.eval_every is not None:
        raise ConfigError("--eval-every counts optimizer steps of a run trained by --steps; pass --steps N, or drop "
                          "--eval-every (a run by epochs evaluates after each)")
    if cfg.steps is not None and cfg.save_every % cfg.eval_every:
        raise ConfigError(f"--save-every {cfg.save_every} is not a multiple of --eval-every {cfg.eval_every}: a "
                          f"checkpoint is saved after an evaluation; pass --save-every {cfg.eval_every * 2} or so")
    if cfg.tie and cfg.embed != cfg.hidden:
        raise ConfigError(f"--tie shares the input embedding with the output layer, which needs --embed equal to "
                          f"--hidden ({cfg.embed} != {cfg.hidden}); pass --embed {cfg.hidden} or drop --tie")
    for name, flag, top in (("dropout", "--dropout", 1.0), ("weight_decay", "--weight-decay", math.inf)):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < top:
            span = "in [0, 1)" if top == 1.0 else "a finite number >= 0"
            raise ConfigError(f"{flag} must be {span}, got {v!r}")
    for name, flag in {"lr": "--lr", "clip": "--clip", "sigma": "--sigma"}.items():
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ConfigError(f"{flag} must be a positive finite number, got {v!r}; pass a value > 0")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {cfg.seed!r}")
    if cfg.split is not None:
        fr = cfg.split
        if (len(fr) != 3 or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 <= f <= 1 for f in fr)
                or fr[0] <= 0 or fr[1] <= 0 or not math.isclose(sum(fr), 1.0, abs_tol=1e-6)):
            raise ConfigError(f"--split must be three fractions TRAIN,VAL,TEST in [0, 1] summing to 1, train and "
                              f"validation above 0, got {fr!r}; e.g. --split 0.8,0.1,0.1")


PRESETS: dict[str, Config] = {
    "d2l-scratch": Config(model="scratch"),
    "d2l-concise": Config(model="concise"),
    # d2l's LSTM and GRU sections (10.1, 10.2): the scratch cells, hidden 32, SGD lr 4, 50 epochs
    "d2l-lstm": Config(cell="lstm", impl="scratch", lr=4.0, epochs=50),
    "d2l-gru": Config(cell="gru", impl="scratch", gru_reset="before", lr=4.0, epochs=50),
    # larger starting points (Flax cells, embeddings, dropout, AdamW with a cosine schedule); for a
    # corpus larger than The Time Machine pass --split; not tuned figures
    "lstm-2x256": Config(cell="lstm", impl="flax", layers=2, hidden=256, embed=64, dropout=0.2, optimizer="adamw",
                         lr=3e-3, weight_decay=0.01, schedule="cosine", warmup=100, batch_size=128, num_steps=64,
                         epochs=20, save_every=2),
    "gru-2x512": Config(cell="gru", impl="flax", layers=2, hidden=512, embed=128, dropout=0.3, optimizer="adamw",
                        lr=2e-3, weight_decay=0.01, schedule="cosine", warmup=200, batch_size=128, num_steps=128,
                        epochs=20, save_every=2),
    # Tiny Shakespeare in about 70 s on 2 CPU cores, nanoGPT's CPU recipe's time (tools/race.py): a Flax GRU
    # (its lecun/orthogonal init learns far faster than d2l's 0.01-normal one), random 64-character windows
    # from a zero state as the blocks it is measured on, a high Adam rate annealed to 0 (docs/results.md)
    "shakespeare-cpu": Config(data="tinyshakespeare", cell="gru", impl="flax", hidden=192, batch_size=64,
                              num_steps=64, optimizer="adam", lr=1.2e-2, clip=5.0, schedule="cosine", warmup=30,
                              steps=1550, eval_every=310, eval_batches=10),
}
