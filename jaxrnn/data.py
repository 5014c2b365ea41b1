"""The Time Machine as d2l 1.0 prepares it: find the file, tokenize characters, build windows, order batches.

Everything here is numpy; the data order is a function of (seed, epoch) only.
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxrnn.errors import DataError

TIMEMACHINE_URL = "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt"
TIMEMACHINE_SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"
TIMEMACHINE_NAME = "timemachine.txt"
UNK = "<unk>"


def sha1_of(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def cache_dir() -> Path:
    """The user cache directory: $XDG_CACHE_HOME/jaxrnn or ~/.cache/jaxrnn."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxrnn"


def _checked(path: Path) -> Path:
    digest = sha1_of(path)
    if digest != TIMEMACHINE_SHA1:
        raise DataError(
            f"{path} has sha1 {digest}, not The Time Machine's {TIMEMACHINE_SHA1}; "
            f"delete it to download again, or pass --data {path} to use it as a plain corpus"
        )
    return path


def _download(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    print(f"jaxrnn: downloading {TIMEMACHINE_URL} to {dest}", file=sys.stderr)
    try:
        with urllib.request.urlopen(TIMEMACHINE_URL, timeout=30) as r:
            tmp.write_bytes(r.read())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"The Time Machine is not on this machine and cannot be downloaded ({e}); "
            f"put {TIMEMACHINE_NAME} in $JAXRNN_DATA_DIR or {dest.parent}, or pass --data FILE"
        ) from None
    try:
        _checked(tmp)
    except DataError:
        tmp.unlink()
        raise
    tmp.replace(dest)
    return dest


def find_corpus(path: str | os.PathLike | None = None) -> Path:
    """An explicit path, else $JAXRNN_DATA_DIR/timemachine.txt, else the cache, else download it."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            what = "is a directory" if p.is_dir() else "does not exist"
            raise DataError(f"corpus {p} {what}; pass --data FILE with a plain-text file")
        return p
    env = os.environ.get("JAXRNN_DATA_DIR")
    if env and (Path(env) / TIMEMACHINE_NAME).is_file():
        return _checked(Path(env) / TIMEMACHINE_NAME)
    cached = cache_dir() / TIMEMACHINE_NAME
    if cached.is_file():
        return _checked(cached)
    return _download(cached)


def read_text(path: Path) -> str:
    """The file's text as UTF-8, with errors a user can act on."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"corpus {path} is not UTF-8 text ({e.reason} at byte {e.start}); pass a UTF-8 file") from None
    except OSError as e:
        raise DataError(f"cannot read corpus {path} ({e.strerror}); check the path and its permissions") from None
    return text


def preprocess(text: str) -> str:
    """d2l's preprocessing: runs of non-letters become one space, then lower-case."""
    return re.sub("[^A-Za-z]+", " ", text).lower()


@dataclass(frozen=True)
class Vocab:
    """Characters to indices: `idx_to_token` is the sorted set of `<unk>` and the tokens (d2l's Vocab)."""

    idx_to_token: tuple[str, ...]
    token_freqs: tuple[tuple[str, int], ...] = ()

    @classmethod
    def build(cls, tokens: list[str] | str) -> Vocab:
        counts = collections.Counter(tokens)
        freqs = tuple(sorted(counts.items(), key=lambda kv: kv[1], reverse=True))
        return cls(tuple(sorted(set([UNK, *counts]))), freqs)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.idx_to_token)})

    def __len__(self) -> int:
        return len(self.idx_to_token)

    @property
    def unk(self) -> int:
        return self._index[UNK]

    def unknown_chars(self, text: str) -> list[str]:
        """The characters of `text` that the vocab does not hold, in order of first appearance."""
        return list(dict.fromkeys(c for c in text if c not in self._index))

    def encode(self, text: str) -> np.ndarray:
        """Indices of the characters of `text`; unknown characters map to `<unk>`."""
        unk = self.unk
        return np.array([self._index.get(c, unk) for c in text], dtype=np.int32)

    def decode(self, indices) -> str:
        return "".join(self.idx_to_token[int(i)] for i in indices)


@dataclass(frozen=True)
class Corpus:
    """A tokenized corpus cut into train and validation windows of `num_steps + 1` tokens."""

    vocab: Vocab
    tokens: np.ndarray  # int32, the whole corpus
    train: np.ndarray  # int32 [num_train, num_steps + 1]
    val: np.ndarray  # int32 [num_val, num_steps + 1]
    path: Path
    sha1: str


def windows(tokens: np.ndarray, num_steps: int) -> np.ndarray:
    """All windows `tokens[i:i + num_steps + 1]` at stride 1 (a read-only view, no copy)."""
    if len(tokens) < num_steps + 1:
        return np.zeros((0, num_steps + 1), tokens.dtype)
    return np.lib.stride_tricks.sliding_window_view(tokens, num_steps + 1)


def load_corpus(
    path: str | os.PathLike | None = None, num_steps: int = 32, num_train: int = 10000, num_val: int = 5000
) -> Corpus:
    """Read, preprocess and window a corpus the way d2l's TimeMachine does."""
    p = find_corpus(path)
    raw = read_text(p)
    text = preprocess(raw)
    if not text.strip():
        raise DataError(f"corpus {p} has no letters after preprocessing; pass a file with English text")
    vocab = Vocab.build(text)
    tokens = vocab.encode(text)
    w = windows(tokens, num_steps)
    need = num_train + num_val
    if len(w) < need:
        raise DataError(
            f"corpus {p} gives {len(w)} windows of {num_steps + 1} characters, but {num_train} train + "
            f"{num_val} validation are asked for; use a longer file or lower --num-train/--num-val/--num-steps"
        )
    return Corpus(vocab, tokens, np.ascontiguousarray(w[:num_train]), np.ascontiguousarray(w[num_train:need]), p,
                  hashlib.sha1(raw.encode("utf-8")).hexdigest())


def file_windows(path: Path, vocab: Vocab, num_steps: int) -> np.ndarray:
    """All windows of a file, preprocessed as d2l does and encoded with an existing vocab; characters
    the vocab lacks read as <unk>, with a warning on stderr."""
    text = preprocess(read_text(find_corpus(path)))
    unknown = vocab.unknown_chars(text)
    if unknown:
        print(f"jaxrnn: warning: {len(unknown)} kinds of character in {path} are not in the vocab; read as <unk>",
              file=sys.stderr)
    w = windows(vocab.encode(text), num_steps)
    if len(w) == 0:
        raise DataError(f"{path} has fewer than {num_steps + 1} characters after preprocessing; pass a longer file")
    return np.ascontiguousarray(w)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled window order of one epoch: a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


def batch_plan(order: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut an order into full batches; the last, partial batch is padded with index 0 and masked.

    Returns (indices [num_batches, batch_size], mask [num_batches, batch_size]). Like d2l, every window
    is used once per epoch and the partial batch is a step of its own.
    """
    n = len(order)
    num_batches = -(-n // batch_size)
    idx = np.zeros(num_batches * batch_size, np.int32)
    idx[:n] = order
    mask = np.zeros(num_batches * batch_size, bool)
    mask[:n] = True
    return idx.reshape(num_batches, batch_size), mask.reshape(num_batches, batch_size)


def chunk_plan(seed: int, first_epoch: int, num_epochs: int, n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch plans for epochs [first_epoch, first_epoch + num_epochs), stacked: [E, num_batches, batch_size]."""
    plans = [batch_plan(epoch_order(seed, e, n), batch_size) for e in range(first_epoch, first_epoch + num_epochs)]
    return np.stack([p[0] for p in plans]), np.stack([p[1] for p in plans])
