"""Run directories: train a config into one, and load one back to sample from.

A run directory holds `config.json` (written before training), `metrics.jsonl` (one JSON object per
epoch) and `checkpoints/` (orbax, every `save_every` epochs and at the end).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax

from jaxrnn import checkpoint
from jaxrnn.config import Config
from jaxrnn.data import Corpus, Vocab, load_corpus
from jaxrnn.errors import JaxrnnError
from jaxrnn.models import LanguageModel, build_model
from jaxrnn.sample import predict
from jaxrnn.training import TrainState, fit, init_state, make_optimizer

CONFIG = "config.json"
METRICS = "metrics.jsonl"


@dataclass
class Trained:
    """A model with its params and vocab: what `train` returns and `load` restores."""

    cfg: Config
    vocab: Vocab
    model: LanguageModel
    state: TrainState
    history: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None

    @property
    def params(self):
        return self.state.params

    def predict(self, prefix: str, num_preds: int = 50, temperature: float = 0.0, seed: int = 0) -> str:
        """d2l's predict: `prefix` plus `num_preds` characters, greedy unless a temperature is given."""
        return predict(self.model, self.params, self.vocab, prefix, num_preds, temperature, seed)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _prepare_dir(run_dir: Path, cfg: Config, force: bool) -> None:
    if (run_dir / CONFIG).exists() or (run_dir / checkpoint.CHECKPOINTS).exists():
        if not force:
            raise JaxrnnError(f"{run_dir} already holds a run; pass --force to overwrite it or --out NEW_DIR")
        shutil.rmtree(run_dir / checkpoint.CHECKPOINTS, ignore_errors=True)
        (run_dir / METRICS).unlink(missing_ok=True)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / CONFIG)
        (run_dir / METRICS).touch()
    except OSError as e:
        raise JaxrnnError(f"cannot write run directory {run_dir} ({e.strerror}); pass --out with a writable path") from None


def meta_of(cfg: Config, vocab: Vocab, record: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint needs beside the arrays to be restored and sampled with no other input."""
    return {"config": cfg.to_dict(), "vocab": list(vocab.idx_to_token), "epoch": record["epoch"],
            "train_ppl": record["train_ppl"], "val_ppl": record["val_ppl"]}


def train(cfg: Config, out: str | Path | None = None, corpus: Corpus | None = None, per_step: bool = False,
          force: bool = False, progress: Callable[[dict[str, Any]], None] | None = None) -> Trained:
    """Train `cfg` from scratch; with `out`, write the run directory (config, metrics, checkpoints)."""
    corpus = corpus or load_corpus(cfg.data, cfg.num_steps, cfg.num_train, cfg.num_val)
    model = build_model(cfg, len(corpus.vocab))
    run_dir = Path(out) if out is not None else None
    if run_dir is not None:
        _prepare_dir(run_dir, cfg, force)

    def on_chunk(state: TrainState, records: list[dict[str, Any]]) -> None:
        for r in records:
            if progress is not None:
                progress(r)
        if run_dir is None:
            return
        with open(run_dir / METRICS, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        try:
            checkpoint.save(run_dir, records[-1]["epoch"], state._asdict(), meta_of(cfg, corpus.vocab, records[-1]),
                            records[-1]["val_ppl"])
        except OSError as e:
            raise JaxrnnError(f"cannot save a checkpoint in {run_dir} ({e.strerror}); free disk space or pass "
                              "--out with a writable directory") from None

    state, history = fit(cfg, corpus, model, per_step=per_step, on_chunk=on_chunk)
    return Trained(cfg, corpus.vocab, model, state, history, run_dir)


def load(run_dir: str | Path, epoch: int | None = None) -> Trained:
    """Restore a run's checkpoint (the latest, or `epoch`) in any process, on this machine's devices."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise JaxrnnError(f"run directory {run_dir} does not exist; pass --run with a directory written by train")
    epoch, meta = checkpoint.restore_meta(run_dir, epoch)
    cfg = Config.from_dict(meta["config"])
    vocab = Vocab(tuple(meta["vocab"]))
    model = build_model(cfg, len(vocab))
    tx = make_optimizer(cfg)
    abstract = jax.eval_shape(lambda: init_state(model, tx, cfg.seed)._asdict())
    state = TrainState(**checkpoint.restore_state(run_dir, epoch, abstract))
    history = [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines() if line.strip()] \
        if (run_dir / METRICS).exists() else []
    return Trained(cfg, vocab, model, state, history, run_dir)
