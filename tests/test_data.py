"""data.py against what d2l's own code makes of The Time Machine, plus corpus lookup and batching."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxrnn import batching, data
from jaxrnn.batching import batch_plan, chunk_plan, epoch_order
from jaxrnn.config import Config
from jaxrnn.data import UNK, Vocab, find_corpus, load_corpus, preprocess, windows
from jaxrnn.errors import DataError

REF = json.loads((Path(__file__).resolve().parent / "data" / "d2l_timemachine.json").read_text())
CHARS = [t for t in REF["idx_to_token"] if t != UNK]


@pytest.fixture
def real_file(corpus) -> Path:
    return corpus.path


# --- The Time Machine as d2l makes it ---------------------------------------------------------------


def test_preprocess_matches_d2l(real_file: Path) -> None:
    text = preprocess(real_file.read_text())
    assert len(text) == REF["preprocessed_chars"]
    assert text.startswith(REF["preprocessed_head"])
    assert hashlib.sha1(text.encode()).hexdigest() == REF["preprocessed_sha1"]


def test_preprocess_collapses_non_letters_and_lowercases() -> None:
    assert preprocess("The Time-Machine, 1895!\n\nBy H. G.") == "the time machine by h g "


def test_vocab_and_tokens_match_d2l(corpus) -> None:
    assert list(corpus.vocab.idx_to_token) == REF["idx_to_token"]
    assert len(corpus.vocab) == REF["vocab_size"] == 28
    assert len(corpus.tokens) == REF["corpus_len"]
    assert corpus.tokens[: len(REF["corpus_head"])].tolist() == REF["corpus_head"]
    assert corpus.sha1 == data.TIMEMACHINE_SHA1


def test_windows_match_d2l(corpus) -> None:
    n = REF["num_steps"]
    assert corpus.train.shape == (10000, n + 1) and corpus.val.shape == (5000, n + 1)
    assert corpus.train[0].tolist() == REF["window_0"]
    assert corpus.val[0].tolist() == REF["window_10000"]  # the first validation window is window 10000
    last = REF["last_val_window_index"]
    np.testing.assert_array_equal(corpus.val[-1], corpus.tokens[last : last + n + 1])


def test_token_freqs_sorted_by_frequency(corpus) -> None:
    text = preprocess(corpus.path.read_text())
    freqs = corpus.vocab.token_freqs
    assert dict(freqs) == collections.Counter(text)
    counts = [c for _, c in freqs]
    assert counts == sorted(counts, reverse=True)
    assert [t for t, _ in freqs[:2]] == [" ", "e"]


def test_default_prompt_comes_from_the_corpus(corpus, tmp_path: Path) -> None:
    """'time traveller' for The Time Machine (the chapters'); any other text: its opening words, the first
    line with text in it, at most 20 characters cut at a space."""
    assert corpus.prompt == "time traveller"
    for text, how, prompt in [("\n\n  First Citizen:\nBefore we proceed any further", "none", "First Citizen:"),
                              ("  GNU GENERAL PUBLIC LICENSE\n  Version 3", "none", "GNU GENERAL PUBLIC"),
                              ("GNU GENERAL PUBLIC LICENSE\n  Version 3", "d2l", "gnu general public"),
                              ("Supercalifragilisticexpialidocious!", "none", "Supercalifragilistic")]:
        (tmp_path / "t.txt").write_text(text * 20)
        assert load_corpus(tmp_path / "t.txt", 8, 100, 10, how).prompt == prompt


# --- property tests ---------------------------------------------------------------------------------


VOCAB = Vocab.build("".join(CHARS))


@settings(deadline=None)
@given(st.text(alphabet=CHARS))
def test_vocab_round_trip(text: str) -> None:
    ids = VOCAB.encode(text)
    assert ids.dtype == np.uint8 and len(ids) == len(text)  # 28 tokens: one byte each
    assert VOCAB.decode(ids) == text


@settings(deadline=None)
@given(st.text(alphabet=CHARS + list("ABZ!?é0\n"), min_size=1))
def test_unknown_chars_map_to_unk(text: str) -> None:
    ids = VOCAB.encode(text)
    for c, i in zip(text, ids):
        assert VOCAB.idx_to_token[i] == (c if c in CHARS else UNK)
    assert VOCAB.unknown_chars(text) == list(dict.fromkeys(c for c in text if c not in CHARS))


@settings(deadline=None)
@given(hnp.arrays(np.int32, st.integers(0, 60), elements=st.integers(0, 27)), st.integers(1, 12))
def test_windows_are_all_slices(tokens: np.ndarray, n: int) -> None:
    w = windows(tokens, n)
    assert w.shape == (max(len(tokens) - n, 0), n + 1)
    for i in range(len(w)):
        np.testing.assert_array_equal(w[i], tokens[i : i + n + 1])


# --- find_corpus: explicit path, then $JAXRNN_DATA_DIR, then the cache, then download ----------------


@pytest.fixture
def no_corpus(monkeypatch, tmp_path: Path) -> Path:
    """Empty $JAXRNN_DATA_DIR, cache and checkout data; returns the cache dir (XDG_CACHE_HOME/jaxrnn)."""
    (tmp_path / "env").mkdir()
    monkeypatch.setenv("JAXRNN_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(data, "CHECKOUT_DATA", tmp_path / "checkout")
    return tmp_path / "xdg" / "jaxrnn"


def _offline(*args, **kwargs):
    raise OSError("network is unreachable")


def test_explicit_path_wins(monkeypatch, tmp_path: Path, real_file: Path) -> None:
    mine = tmp_path / "mine.txt"
    mine.write_text("any text at all")
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    assert find_corpus(mine) == mine  # no sha1 check on an explicit file


def test_data_dir_before_cache(monkeypatch, no_corpus: Path, real_file: Path) -> None:
    no_corpus.mkdir(parents=True)
    (no_corpus / "timemachine.txt").write_text("a wrong file the lookup must not reach")
    monkeypatch.setenv("JAXRNN_DATA_DIR", str(real_file.parent))
    assert find_corpus() == real_file.parent / "timemachine.txt"


def test_cache_when_data_dir_lacks_file(monkeypatch, no_corpus: Path, real_file: Path) -> None:
    no_corpus.mkdir(parents=True)
    shutil.copy(real_file, no_corpus / "timemachine.txt")
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    assert find_corpus() == no_corpus / "timemachine.txt"


def test_a_checkout_trains_offline(monkeypatch, no_corpus: Path, real_file: Path) -> None:
    """Nothing in $JAXRNN_DATA_DIR or the cache: a source checkout's tests/data copy, sha1-checked, before
    any download (so the README's first command works in a fresh clone without d2l's server)."""
    (no_corpus.parent.parent / "checkout").mkdir()
    shutil.copy(real_file, no_corpus.parent.parent / "checkout" / "timemachine.txt")
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    assert find_corpus() == no_corpus.parent.parent / "checkout" / "timemachine.txt"
    assert data.CORPORA["timemachine"].file in {p.name for p in (Path(__file__).parent / "data").iterdir()}


def test_cache_defaults_to_home(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.cache_dir() == tmp_path / ".cache" / "jaxrnn"


def test_download_into_cache(monkeypatch, no_corpus: Path, real_file: Path, capsys) -> None:
    urls = []

    def fake_urlopen(url, timeout=None):
        urls.append(url)
        return io.BytesIO(real_file.read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    got = find_corpus()
    assert got == no_corpus / "timemachine.txt" and data.sha1_of(got) == data.TIMEMACHINE_SHA1
    assert urls == [data.TIMEMACHINE_URL]
    assert "downloading" in capsys.readouterr().err
    assert find_corpus() == got and len(urls) == 1  # the second lookup uses the cache


def test_download_of_wrong_file_is_refused(monkeypatch, no_corpus: Path) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"an error page"))
    with pytest.raises(DataError, match="sha1"):
        find_corpus()
    assert not (no_corpus / "timemachine.txt").exists()


def test_refused_download_leaves_no_partial_file(monkeypatch, no_corpus: Path) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"an error page"))
    with pytest.raises(DataError):
        find_corpus()
    assert not list(no_corpus.glob("*"))


@pytest.mark.parametrize("data_dir", ["unset", "empty"])
def test_offline_error_says_where_to_put_the_file(monkeypatch, no_corpus: Path, data_dir: str) -> None:
    if data_dir == "unset":
        monkeypatch.delenv("JAXRNN_DATA_DIR")
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    with pytest.raises(DataError) as e:
        find_corpus()
    msg = str(e.value)
    for needed in ("timemachine.txt", "$JAXRNN_DATA_DIR", str(no_corpus), "--data"):
        assert needed in msg
    assert not list(no_corpus.glob("*"))  # no partial download left behind


def test_wrong_sha1_in_data_dir(monkeypatch, no_corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "env" / "timemachine.txt").write_text("the time machine, abridged")
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    with pytest.raises(DataError, match="sha1"):
        load_corpus()


@pytest.mark.parametrize("kind", ["directory", "missing", "not-utf8", "too-short", "no-letters"])
def test_bad_corpus_files(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "corpus.txt"
    if kind == "directory":
        path.mkdir()
    elif kind == "not-utf8":
        path.write_bytes("the time machine ".encode() * 100 + b"\xff\xfe")
    elif kind == "too-short":
        path.write_text("the time traveller " * 3)  # 49 windows of 9 < 50 + 20
    elif kind == "no-letters":
        path.write_text("1895 -- 42!\n" * 100)
    with pytest.raises(DataError):
        load_corpus(path, num_steps=8, num_train=50, num_val=20)


def test_plain_corpus(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("Hello, World! " * 10)
    c = load_corpus(path, num_steps=4, num_train=20, num_val=10)
    assert c.vocab.idx_to_token == (" ", UNK, "d", "e", "h", "l", "o", "r", "w")
    assert c.train.shape == (20, 5) and c.val.shape == (10, 5)
    assert c.vocab.decode(c.train[0]) == "hello"
    np.testing.assert_array_equal(c.val[0], c.tokens[20:25])


# --- data order -------------------------------------------------------------------------------------


def test_epoch_order_is_a_function_of_seed_and_epoch() -> None:
    a = epoch_order(0, 3, 1000)
    np.random.seed(123)  # neither global numpy state ...
    epoch_order(0, 4, 1000)  # ... nor earlier calls change it
    np.testing.assert_array_equal(epoch_order(0, 3, 1000), a)
    assert np.array_equal(np.sort(a), np.arange(1000))
    assert not np.array_equal(epoch_order(0, 4, 1000), a)
    assert not np.array_equal(epoch_order(1, 3, 1000), a)
    assert not np.array_equal(epoch_order(1, 3, 1000), epoch_order(0, 4, 1000))  # (seed, epoch), not seed + epoch


@pytest.mark.parametrize("n", [11, 64, 1000, 4097])
def test_a_big_parts_order_is_a_permutation_computed_a_slice_at_a_time(monkeypatch, n: int) -> None:
    """Above BIG_PART windows (lowered here) the order is a keyed permutation: every window once, a
    function of (seed, epoch), any slice equal to the whole order's, and batches [lo, hi) as batch_plan
    cuts the whole order. At or below BIG_PART it stays numpy's permutation."""
    small = epoch_order(0, 3, n)
    monkeypatch.setattr(batching, "BIG_PART", 10)
    order = epoch_order(0, 3, n)
    assert sorted(order.tolist()) == list(range(n)) and order.dtype == np.int32
    assert not np.array_equal(order, small) and not np.array_equal(order, np.arange(n))
    np.testing.assert_array_equal(epoch_order(0, 3, n), order)
    assert not np.array_equal(epoch_order(0, 4, n), order) and not np.array_equal(epoch_order(1, 3, n), order)
    np.testing.assert_array_equal(batching.order_slice(0, 3, n, n // 3, n - 1), order[n // 3:n - 1])
    idx, mask = batch_plan(order, 8)
    got = batching.batch_slice(0, 3, n, 8, 1, len(idx))
    np.testing.assert_array_equal(got[0], idx[1:])
    np.testing.assert_array_equal(got[1], mask[1:])
    monkeypatch.undo()
    np.testing.assert_array_equal(batching.batch_slice(0, 3, n, 8, 0, 2)[0], batch_plan(small, 8)[0][:2])


def test_batch_plan_covers_every_window_once() -> None:
    order = epoch_order(0, 0, 10000)
    idx, mask = batch_plan(order, 1024)
    assert idx.shape == mask.shape == (10, 1024)
    assert mask.sum(axis=1).tolist() == [1024] * 9 + [784]
    assert not mask[-1, 784:].any()
    np.testing.assert_array_equal(idx[mask], order)  # in order, each index exactly once


def test_batch_plan_exact_multiple() -> None:
    idx, mask = batch_plan(np.arange(8), 4)
    assert idx.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]] and mask.all()


def test_chunk_plan_stacks_epochs() -> None:
    idx, mask = chunk_plan(7, 2, 3, 100, 32)
    assert idx.shape == mask.shape == (3, 4, 32)
    for e in range(3):
        i, m = batch_plan(epoch_order(7, 2 + e, 100), 32)
        np.testing.assert_array_equal(idx[e], i)
        np.testing.assert_array_equal(mask[e], m)


# --- corpora by name: --data tinyshakespeare ---------------------------------------------------------


@pytest.fixture
def shakespeare(monkeypatch, no_corpus: Path) -> Path:
    """'tinyshakespeare' names the repo's 16 KB slice of it (its sha1 in place of the whole text's), found
    in an otherwise empty $JAXRNN_DATA_DIR; returns that file."""
    head = Path(__file__).parent / "data" / "tinyshakespeare-head.txt"
    env = Path(os.environ["JAXRNN_DATA_DIR"])
    shutil.copy(head, env / "tinyshakespeare.txt")
    monkeypatch.setitem(data.CORPORA, "tinyshakespeare",
                        dataclasses.replace(data.CORPORA["tinyshakespeare"], sha1=data.sha1_of(head)))
    return env / "tinyshakespeare.txt"


def test_tinyshakespeare_is_read_as_nanogpt_reads_it(shakespeare: Path) -> None:
    """By name: raw text (case, punctuation, newlines), the first 90% training and the last 10% validation,
    unless the config says otherwise; the default prompt is its opening words."""
    cfg = Config(data="tinyshakespeare")
    assert (cfg.preprocessing, cfg.split) == ("none", (0.9, 0.1, 0.0))
    assert Config(data="tinyshakespeare", preprocessing="d2l").preprocessing == "d2l"
    # a config that states its reading keeps it for another text: the seed config reads d2l's way
    assert (Config().replace(data="tinyshakespeare").preprocessing, Config().replace(data="x").split) == ("d2l", None)
    assert Config(data="tinyshakespeare").replace(data="other.txt").split == (0.9, 0.1, 0.0)
    corpus = load_corpus("tinyshakespeare", 32, preprocessing=cfg.preprocessing, split=cfg.split)
    assert corpus.path == shakespeare and corpus.prompt == "First Citizen:"
    assert {"F", ":", "\n", "."} <= set(corpus.vocab.idx_to_token)
    n = len(corpus.tokens)
    assert corpus.spans["val"][0] == int(0.9 * n) and corpus.spans["val"][1] == n - int(0.9 * n) - 32  # nanoGPT's cut


def test_named_corpus_downloads_from_its_source(monkeypatch, shakespeare: Path, no_corpus: Path) -> None:
    body = shakespeare.read_bytes()
    shakespeare.unlink()
    urls = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: urls.append(url) or io.BytesIO(body))
    assert find_corpus("tinyshakespeare") == no_corpus / "tinyshakespeare.txt"
    assert urls == ["https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"]
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"<html>rate limited"))
    (no_corpus / "tinyshakespeare.txt").unlink()
    with pytest.raises(DataError, match="not the .* of https://raw.githubusercontent.com/karpathy/char-rnn"):
        find_corpus("tinyshakespeare")
    with pytest.raises(DataError, match="pass --data FILE with a plain-text file, or one of the names "
                                        "timemachine, tinyshakespeare"):
        find_corpus("tinyshakespear")


def test_a_run_on_tinyshakespeare_records_how_it_read_it(shakespeare: Path, tiny_cfg, tmp_path: Path) -> None:
    """`--data tinyshakespeare`: config.json keeps the name (a resume finds it again) with the preprocessing,
    split and evaluation protocol it implied; the checkpoint keeps the corpus' prompt for `sample`."""
    from jaxrnn import run

    trained = run.train(tiny_cfg(data="tinyshakespeare"), out=tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["data"], saved["preprocessing"], saved["split"]) == ("tinyshakespeare", "none", [0.9, 0.1, 0.0])
    assert saved["eval_protocol"] == "blocks" and trained.history[-1]["val_protocol"] == "blocks"
    loaded = run.load(tmp_path / "run")
    assert trained.prompt == loaded.prompt == "First Citizen:"
    assert loaded.predict(loaded.prompt, 20) == trained.predict(trained.prompt, 20)
