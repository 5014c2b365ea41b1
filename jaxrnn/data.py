"""Corpora as d2l 1.0 prepares The Time Machine (or raw): find the file, tokenize characters, cut
parts into windows. Everything here is numpy; `batching.py` orders the windows into batches.
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxrnn.config import CORPORA, Source, sha1_of, source_of
from jaxrnn.errors import DataError, say_once

# a source checkout carries The Time Machine for its tests: a clone trains offline (absent from a wheel)
CHECKOUT_DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
TIMEMACHINE_URL = CORPORA["timemachine"].url
TIMEMACHINE_SHA1 = CORPORA["timemachine"].sha1
UNK = "<unk>"
PROMPT = "time traveller"  # the chapters' warm-up prefix
PROMPT_CHARS = 20  # the longest default prompt taken from another corpus


def cache_dir() -> Path:
    """The user cache directory: $XDG_CACHE_HOME/jaxrnn or ~/.cache/jaxrnn."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxrnn"


def _checked(path: Path, source: Source) -> Path:
    digest = sha1_of(path)
    if digest != source.sha1:
        raise DataError(
            f"{path} has sha1 {digest}, not the {source.sha1} of {source.url}; "
            f"delete it to download again, or pass --data {path} to use it as a plain corpus"
        )
    return path


def _download(dest: Path, source: Source) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)  # one per process
    os.close(fd)
    tmp = Path(name)
    print(f"jaxrnn: downloading {source.url} to {dest}", file=sys.stderr)
    try:
        with urllib.request.urlopen(source.url, timeout=30) as r:
            tmp.write_bytes(r.read())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"{source.file} is not on this machine and cannot be downloaded ({e}); put {source.file} in "
            f"$JAXRNN_DATA_DIR or {dest.parent}, or pass --data with a copy of it (sha1 {source.sha1}: a file "
            "with those bytes is read as the named corpus is)"
        ) from None
    try:
        _checked(tmp, source)
    except DataError:
        tmp.unlink()
        raise
    tmp.replace(dest)
    return dest


def find_corpus(path: str | os.PathLike | None = None) -> Path:
    """A named corpus (None: The Time Machine; see CORPORA) from $JAXRNN_DATA_DIR, else the cache, else
    a source checkout's tests/data, else downloaded into the cache, its sha1 checked; else the file `path`."""
    source = source_of(path)
    if source is None:
        p = Path(path)
        if not p.is_file():
            what = "is a directory" if p.is_dir() else "does not exist"
            raise DataError(f"corpus {p} {what}; pass --data FILE with a plain-text file, or one of the names "
                            f"{', '.join(CORPORA)}")
        return p
    env = os.environ.get("JAXRNN_DATA_DIR")
    if env and (Path(env) / source.file).is_file():
        return _checked(Path(env) / source.file, source)
    cached = cache_dir() / source.file
    if cached.is_file():
        return _checked(cached, source)
    if (CHECKOUT_DATA / source.file).is_file():
        return _checked(CHECKOUT_DATA / source.file, source)
    return _download(cached, source)


def read_text(path: Path) -> tuple[str, str]:
    """The file's text as UTF-8 and the sha1 of its bytes, with errors a user can act on; the bytes are
    dropped once decoded, so a large file costs its text only."""
    try:
        raw = Path(path).read_bytes()
        return raw.decode("utf-8"), hashlib.sha1(raw).hexdigest()
    except UnicodeDecodeError as e:
        raise DataError(f"corpus {path} is not UTF-8 text ({e.reason} at byte {e.start}); pass a UTF-8 file") from None
    except OSError as e:
        raise DataError(f"cannot read corpus {path} ({e.strerror}); check the path and its permissions") from None


COVERED_AT_LEAST = 0.25  # d2l's window counts covering less of a text than this (not The Time Machine) warn


CHUNK = 1 << 20  # characters per slice when counting and encoding a text: bounds the temporary arrays


def code_points(text: str) -> Iterator[np.ndarray]:
    """The text's code points, a slice of CHUNK characters at a time (uint32 arrays)."""
    for i in range(0, len(text), CHUNK):
        yield np.frombuffer(text[i:i + CHUNK].encode("utf-32-le"), dtype=np.uint32)


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every index of a vocab this size."""
    return np.dtype(np.uint8 if vocab_size <= 1 << 8 else np.uint16 if vocab_size <= 1 << 16 else np.uint32)


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
        """The vocab of a text's characters (counted with numpy, a slice at a time) or of a token list;
        `token_freqs` by count, ties in order of code point (d2l's: of first appearance)."""
        if isinstance(tokens, str):
            counts_P = np.zeros(0, np.int64)
            for points in code_points(tokens):
                c = np.bincount(points)
                counts_P = np.pad(counts_P, (0, max(len(c) - len(counts_P), 0)))
                counts_P[:len(c)] += c
            counts = {chr(p): int(counts_P[p]) for p in np.flatnonzero(counts_P)}
        else:
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
        """Indices of the characters of `text` in the smallest integer type that holds them (uint8 for
        up to 256 tokens); unknown characters map to `<unk>`. Vectorised over the text's code points, a
        slice at a time, with a table from code point to index."""
        top = max((ord(t) for t in self._index if len(t) == 1), default=0)
        table = np.full(top + 2, self.unk, token_dtype(len(self)))  # the last entry: any larger code point
        for token, i in self._index.items():
            if len(token) == 1:
                table[ord(token)] = i
        out = np.empty(len(text), table.dtype)
        for k, points in enumerate(code_points(text)):
            out[k * CHUNK:k * CHUNK + len(points)] = table[np.minimum(points, top + 1)]
        return out

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
    tokens: np.ndarray  # the whole corpus, in the smallest unsigned type that holds the vocab (token_dtype)
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
    # the first int(f * n) tokens, as nanoGPT cuts its 90%; 1e-6 keeps 0.6 + 0.3 (0.8999...) at 0.9
    cuts = np.floor(np.cumsum((0.0, *fractions)) * num_tokens + 1e-6).astype(int)
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
    text, sha1 = read_text(p)
    text = preprocess(text, preprocessing)
    if not text.strip():
        what = ("no letters A-Z, which is all d2l's preprocessing keeps; pass --preprocessing none to read it as it "
                "is, or a file with English text") if preprocessing == "d2l" else "no text; pass a non-empty file"
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
        covered = num_train + num_val + num_steps
        if sha1 != TIMEMACHINE_SHA1 and covered < COVERED_AT_LEAST * len(tokens):
            say_once(f"jaxrnn: warning: d2l's window counts (--num-train {num_train}, --num-val {num_val}) cover "
                      f"{covered:,} of the {len(tokens):,} characters of {p} ({covered / len(tokens):.1%}); pass "
                      "--split 0.9,0.1,0 (or another) to train and validate on all of it")
    else:
        short = [part for part, f in zip(PARTS, split) if f > 0 and spans[part][1] == 0]
        if short:
            raise DataError(f"corpus {p} has {len(tokens)} characters: the {' and '.join(short)} part of --split "
                            f"{','.join(map(str, split))} holds no window of {num_steps + 1}; give it a larger "
                            "fraction, lower --num-steps, or use a longer file")
    return Corpus(vocab, tokens, num_steps, spans, p, sha1, preprocessing)


def part_spans(num_tokens: int, num_steps: int, num_train: int, num_val: int, split: tuple[float, ...] | None
               ) -> dict[str, tuple[int, int]]:
    """(first window, count) of each part: d2l's window counts, or the `split` fractions of the text."""
    if split is None:
        return {"train": (0, num_train), "val": (num_train, num_val), "test": (0, 0)}
    return split_spans(num_tokens, num_steps, split)


def file_tokens(path: Path, vocab: Vocab, num_steps: int, preprocessing: str = "d2l") -> np.ndarray:
    """A file's tokens, preprocessed as the run's corpus was and encoded with its vocab; characters
    the vocab lacks read as <unk>, with a warning on stderr."""
    text = preprocess(read_text(find_corpus(path))[0], preprocessing)
    unknown = vocab.unknown_chars(text)
    if unknown:
        print(f"jaxrnn: warning: {len(unknown)} kinds of character in {path} are not in the vocab; read as <unk>",
              file=sys.stderr)
    if len(text) < num_steps + 1:
        raise DataError(f"{path} has fewer than {num_steps + 1} characters after preprocessing; pass a longer file")
    return vocab.encode(text)
