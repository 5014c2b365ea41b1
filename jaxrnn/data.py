"""Corpora as d2l 1.0 prepares The Time Machine (or raw): find the file, tokenize characters, cut
parts into windows, order batches.

Everything here is numpy; the data order is a function of (seed, epoch) only.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import re
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxrnn.errors import DataError

TIMEMACHINE_URL = "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt"
TIMEMACHINE_SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"
TIMEMACHINE_NAME = "timemachine.txt"
UNK = "<unk>"
PROMPT = "time traveller"  # the chapters' warm-up prefix
PROMPT_CHARS = 20  # the longest default prompt taken from another corpus


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
    fd, name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)  # one per process
    os.close(fd)
    tmp = Path(name)
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


PREPROCESSING = ("d2l", "none")


def preprocess(text: str, how: str = "d2l") -> str:
    """d2l's preprocessing (runs of non-letters become one space, then lower-case), or 'none': the
    text as it is, case, punctuation and newlines kept."""
    return re.sub("[^A-Za-z]+", " ", text).lower() if how == "d2l" else text


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
        """Indices of the characters of `text`; unknown characters map to `<unk>`. Vectorised over the
        text's code points with a table as long as the largest one (at most 1.1 M entries)."""
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.full(int(points.max()) + 1 if len(points) else 1, self.unk, np.int32)
        for token, i in self._index.items():
            if len(token) == 1 and ord(token) < len(table):
                table[ord(token)] = i
        return table[points]

    def decode(self, indices) -> str:
        return "".join(self.idx_to_token[int(i)] for i in indices)

    def prompt(self) -> str:
        """A checkpoint's prompt from its vocab alone (checkpoints before the prompt was saved): the
        chapters' 'time traveller' where the vocab holds its characters, else its most frequent one."""
        return PROMPT if not self.unknown_chars(PROMPT) or not self.token_freqs else self.token_freqs[0][0]


PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Corpus:
    """A tokenized corpus and its parts: each part is a run of windows of `num_steps + 1` tokens at
    stride 1, `spans[part] = (first window, count)`. Windows are views of `tokens`, never copies, so
    a large corpus costs its tokens only; training gathers them on the device by start index."""

    vocab: Vocab
    tokens: np.ndarray  # int32, the whole corpus
    num_steps: int
    spans: dict[str, tuple[int, int]]  # 'train', 'val' and 'test' (count 0: no test part)
    path: Path
    sha1: str
    preprocessing: str = "d2l"

    def part_tokens(self, part: str) -> np.ndarray:
        """The tokens a part's windows cover: window i is `part_tokens[i:i + num_steps + 1]`."""
        first, count = self.spans[part]
        return self.tokens[first:first + count + self.num_steps] if count else self.tokens[:0]

    def windows(self, part: str) -> np.ndarray:
        """A part's windows, [count, num_steps + 1] (a read-only view)."""
        return windows(self.part_tokens(part), self.num_steps)

    @property
    def train(self) -> np.ndarray:
        return self.windows("train")

    @property
    def val(self) -> np.ndarray:
        return self.windows("val")

    @property
    def test(self) -> np.ndarray:
        return self.windows("test")

    @property
    def prompt(self) -> str:
        """The default prompt: the chapters' 'time traveller' for The Time Machine, else the opening
        words of this corpus' training text (its first line, at most PROMPT_CHARS, cut at a space)."""
        if self.sha1 == TIMEMACHINE_SHA1:
            return PROMPT
        head = self.vocab.decode(self.part_tokens("train")[:4 * PROMPT_CHARS])
        line = next((ln.strip() for ln in head.splitlines() if ln.strip()), head[:1] or PROMPT)
        return line if len(line) <= PROMPT_CHARS else line[:PROMPT_CHARS + 1].rsplit(" ", 1)[0][:PROMPT_CHARS]

    def head(self, num_train: int, num_val: int) -> Corpus:
        """The same corpus with its train and validation parts cut to their first windows."""
        spans = dict(self.spans)
        for part, n in (("train", num_train), ("val", num_val)):
            spans[part] = (spans[part][0], min(spans[part][1], n))
        return dataclasses.replace(self, spans=spans)


def windows(tokens: np.ndarray, num_steps: int) -> np.ndarray:
    """All windows `tokens[i:i + num_steps + 1]` at stride 1 (a read-only view, no copy)."""
    if len(tokens) < num_steps + 1:
        return np.zeros((0, num_steps + 1), tokens.dtype)
    return np.lib.stride_tricks.sliding_window_view(tokens, num_steps + 1)


def split_spans(num_tokens: int, num_steps: int, fractions: tuple[float, float, float]) -> dict[str, tuple[int, int]]:
    """Cut `num_tokens` into consecutive train, validation and test stretches by `fractions`, each
    with its own windows: no window crosses a boundary, so no part sees another's text."""
    cuts = np.round(np.cumsum((0.0, *fractions)) * num_tokens).astype(int)
    cuts[-1] = num_tokens
    return {part: (int(a), max(int(b - a) - num_steps, 0)) for part, a, b in zip(PARTS, cuts[:-1], cuts[1:])}


def load_corpus(
    path: str | os.PathLike | None = None, num_steps: int = 32, num_train: int = 10000, num_val: int = 5000,
    preprocessing: str = "d2l", split: tuple[float, float, float] | None = None,
) -> Corpus:
    """Read, preprocess and window a corpus. By default as d2l's TimeMachine: the first `num_train`
    windows train, the next `num_val` validate (overlapping the last training windows by
    `num_steps` tokens, as d2l's do), no test part. With `split` = (train, val, test) fractions, the
    text is cut into three consecutive stretches that share no window. The vocab is the whole
    text's characters, so no part has unknown ones."""
    p = find_corpus(path)
    raw = read_text(p)
    text = preprocess(raw, preprocessing)
    if not text.strip():
        what = "no letters after preprocessing; pass a file with English text" if preprocessing == "d2l" \
            else "no text; pass a non-empty file"
        raise DataError(f"corpus {p} has {what}")
    vocab = Vocab.build(text)
    tokens = vocab.encode(text)
    total = max(len(tokens) - num_steps, 0)
    spans = part_spans(len(tokens), num_steps, num_train, num_val, split)
    if split is None:
        if total < num_train + num_val:
            raise DataError(
                f"corpus {p} gives {total} windows of {num_steps + 1} characters, but {num_train} train + "
                f"{num_val} validation are asked for; use a longer file, lower --num-train/--num-val/--num-steps, "
                "or pass --split")
    else:
        short = [part for part, f in zip(PARTS, split) if f > 0 and spans[part][1] == 0]
        if short:
            raise DataError(f"corpus {p} has {len(tokens)} characters: the {' and '.join(short)} part of --split "
                            f"{','.join(map(str, split))} holds no window of {num_steps + 1}; give it a larger "
                            "fraction, lower --num-steps, or use a longer file")
    return Corpus(vocab, tokens, num_steps, spans, p, hashlib.sha1(raw.encode("utf-8")).hexdigest(), preprocessing)


def part_spans(num_tokens: int, num_steps: int, num_train: int, num_val: int, split: tuple[float, ...] | None
               ) -> dict[str, tuple[int, int]]:
    """(first window, count) of each part: d2l's window counts, or the `split` fractions of the text."""
    if split is None:
        return {"train": (0, num_train), "val": (num_train, num_val), "test": (0, 0)}
    return split_spans(num_tokens, num_steps, split)


def file_tokens(path: Path, vocab: Vocab, num_steps: int, preprocessing: str = "d2l") -> np.ndarray:
    """A file's tokens, preprocessed as the run's corpus was and encoded with its vocab; characters
    the vocab lacks read as <unk>, with a warning on stderr."""
    text = preprocess(read_text(find_corpus(path)), preprocessing)
    unknown = vocab.unknown_chars(text)
    if unknown:
        print(f"jaxrnn: warning: {len(unknown)} kinds of character in {path} are not in the vocab; read as <unk>",
              file=sys.stderr)
    if len(text) < num_steps + 1:
        raise DataError(f"{path} has fewer than {num_steps + 1} characters after preprocessing; pass a longer file")
    return vocab.encode(text)


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


BATCHINGS = ("random", "sequential")


def sequential_plan(seed: int, epoch: int, n: int, batch_size: int, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """d2l's sequential partitioning over `n` windows: after a random offset in [0, num_steps), the
    text is cut into `batch_size` streams of `n // batch_size` windows, and batch i takes each
    stream's i-th stretch of `num_steps` tokens, so row r of batch i + 1 continues row r of batch i
    (its first input is the token after batch i's last input). Returns (window starts
    [num_batches, batch_size], an all-true mask); the shapes do not depend on the epoch."""
    stream = n // batch_size
    offset = np.random.default_rng([seed, epoch]).integers(num_steps)
    starts = offset + stream * np.arange(batch_size)[None, :] + num_steps * np.arange(stream // num_steps)[:, None]
    return starts.astype(np.int32), np.ones(starts.shape, bool)


def steps_per_epoch(batching: str, n: int, batch_size: int, num_steps: int) -> int:
    """Optimizer steps in one epoch over `n` training windows."""
    return -(-n // batch_size) if batching == "random" else (n // batch_size) // num_steps


def check_batching(batching: str, n: int, batch_size: int, num_steps: int) -> None:
    """Refuse a sequential partitioning whose streams are shorter than one batch's stretch."""
    if batching == "sequential" and steps_per_epoch(batching, n, batch_size, num_steps) == 0:
        raise DataError(
            f"--batching sequential cuts the {n} training windows into {batch_size} streams of {n // batch_size}, "
            f"fewer than --num-steps {num_steps}; "
            + (f"use --batch-size {n // num_steps} or less" if n >= num_steps else "lower --num-steps"))


def chunk_plan(seed: int, first_epoch: int, num_epochs: int, n: int, batch_size: int, batching: str = "random",
               num_steps: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Batch plans for epochs [first_epoch, first_epoch + num_epochs), stacked: [E, num_batches, batch_size]."""
    epochs = range(first_epoch, first_epoch + num_epochs)
    if batching == "sequential":
        plans = [sequential_plan(seed, e, n, batch_size, num_steps) for e in epochs]
    else:
        plans = [batch_plan(epoch_order(seed, e, n), batch_size) for e in epochs]
    return np.stack([p[0] for p in plans]), np.stack([p[1] for p in plans])
