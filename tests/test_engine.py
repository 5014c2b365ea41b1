"""engine.py: continuous batching. Greedy jobs get `sample.predict`'s text whatever shares their chunks, seeded
draws do not depend on the batch, and each row samples by its own temperature, top-k and top-p."""

from __future__ import annotations

import threading

import jax
import numpy as np
import pytest
from test_sample import first_token_probs

from jaxrnn.cells import Loop
from jaxrnn.engine import Engine, Job, buckets
from jaxrnn.models import ModelConfig, ScratchRNNLM
from jaxrnn.sample import predict

H = 16


@pytest.fixture(scope="module", params=["gru", pytest.param("lstm", marks=pytest.mark.slow)])
def lm(request, tiny_corpus):
    """(model, params, vocab) with random weights large enough for varied greedy text; a GRU (one state
    array) and an LSTM (a pair)."""
    V, cell = len(tiny_corpus.vocab), request.param
    model = ScratchRNNLM(ModelConfig(V, H, Loop(cell)))
    params = ScratchRNNLM(ModelConfig(V, H, Loop(cell), sigma=0.5)).init(jax.random.key(3))
    return model, params, tiny_corpus.vocab


@pytest.fixture(scope="module")
def engine(lm):
    model, params, _ = lm
    e = Engine(model, params, max_batch=8, chunk=4)
    e.warm()
    e.start()
    yield e
    e.stop()


def run_jobs(engine: Engine, jobs: list[Job]) -> list[np.ndarray]:
    """Submit `jobs` together (their own emits replaced) and wait for every one's characters."""
    out: list[list[int]] = [[] for _ in jobs]
    left, lock, done = [len(jobs)], threading.Lock(), threading.Event()

    def emit_to(i):
        def emit(ids, finished):
            out[i].extend(int(t) for t in ids)
            with lock:
                left[0] -= finished
                if not left[0]:
                    done.set()
        return emit

    for i, job in enumerate(jobs):
        job.emit = emit_to(i)
        engine.submit(job)
    assert done.wait(120)
    return [np.array(o, np.int32) for o in out]


def job(vocab, prompt: str, n: int, **how) -> Job:
    return Job(vocab.encode(prompt), n, lambda ids, done: None, **how)


def test_buckets() -> None:
    assert buckets(1) == [1] and buckets(8) == [1, 2, 4, 8] and buckets(12) == [1, 2, 4, 8, 12]


def test_greedy_jobs_equal_predict_in_mixed_batches(engine, lm) -> None:
    """Prompts shorter and longer than a chunk, more jobs than slots, sampled jobs in the same chunks: each
    greedy job's text is `predict`'s, and every job gets exactly its max_tokens."""
    model, params, vocab = lm
    prompts = ["t", "time traveller", "the", "a" * 11, "it was the best of times it was the worst", "x y"] * 2
    lengths = [1, 25, 7, 40, 13, 3, 0, 9, 30, 2, 17, 4]
    greedy = [job(vocab, p, n) for p, n in zip(prompts, lengths)]
    noise = [job(vocab, "the", 20, temperature=1.0, seed=s) for s in range(5)]
    got = run_jobs(engine, greedy[:6] + noise + greedy[6:])
    for text, p, n in zip(got[:6] + got[11:], prompts, lengths):
        assert p + vocab.decode(text) == predict(model, params, vocab, p, n)
    assert [len(t) for t in got[6:11]] == [20] * 5


def test_seeded_draws_do_not_depend_on_the_batch(engine, lm) -> None:
    """A sampled job's text depends on its (seed, stream) only: alone or beside others, the same; another
    stream of the same seed draws other text."""
    _, _, vocab = lm
    alone = run_jobs(engine, [job(vocab, "time", 30, temperature=0.9, top_k=8, top_p=0.95, seed=11)])[0]
    crowd = [job(vocab, "x" * k + "a", 30, temperature=1.0, seed=k) for k in range(6)]
    beside = run_jobs(engine, [*crowd[:3], job(vocab, "time", 30, temperature=0.9, top_k=8, top_p=0.95, seed=11),
                               *crowd[3:]])[3]
    other = run_jobs(engine, [job(vocab, "time", 30, temperature=0.9, top_k=8, top_p=0.95, seed=11, stream=1)])[0]
    assert np.array_equal(alone, beside)
    assert not np.array_equal(alone, other)


@pytest.mark.parametrize("lm", ["gru"], indirect=True)
def test_each_row_samples_by_its_own_settings(engine, lm) -> None:
    """One batch of first draws, a third of the rows at temperature 1.5 with top-k 2, a third with a nucleus
    of 3 tokens, a third greedy: each third's frequencies follow its own renormalised softmax (float64)."""
    model, params, vocab = lm
    prompt, temperature, per = "the", 1.5, 600
    p = first_token_probs(model, params, vocab.encode(prompt), temperature)
    order = np.argsort(-p)
    top_p = float(p[order][:2].sum() + 0.5 * p[order][2])  # the nucleus holds 3 tokens

    def want(keep: int) -> np.ndarray:
        w = np.zeros_like(p)
        w[order[:keep]] = p[order[:keep]] / p[order[:keep]].sum()
        return w

    kinds = [dict(temperature=temperature, top_k=2), dict(temperature=temperature, top_p=top_p), {}]
    jobs = [job(vocab, prompt, 1, seed=i, **kinds[i % 3]) for i in range(3 * per)]
    first = np.array([g[0] for g in run_jobs(engine, jobs)])
    for k, keep in ((0, 2), (1, 3)):  # top-k 2 and the nucleus of 3, each row by its own rule
        freq = np.bincount(first[k::3], minlength=len(vocab)) / per
        assert set(np.flatnonzero(freq)) <= set(order[:keep])
        assert np.abs(freq - want(keep)).max() < 0.1  # about 5 standard errors of 600 draws
    assert (first[2::3] == order[0]).all()
    assert p[order[0]] < 0.8  # far from greedy, so the check means something


def test_a_cancelled_job_frees_its_slot(engine, lm) -> None:
    """A job cancelled mid-way (its client gone) leaves its slot at the next chunk and emits no more."""
    _, _, vocab = lm
    seen, first = [], threading.Event()

    def emit(ids, done):
        seen.append(len(ids))
        first.set()

    long = Job(vocab.encode("the"), 10**7, emit, temperature=1.0)
    engine.submit(long)
    assert first.wait(60)
    long.cancelled.set()
    after = run_jobs(engine, [job(vocab, "the", 5)])  # a chunk after the cancel has run
    count = len(seen)
    run_jobs(engine, [job(vocab, "the", 5)])
    assert engine.busy == 0 and len(seen) == count and len(after[0]) == 5


def test_an_engine_that_fails_ends_its_jobs_and_says_why(lm, monkeypatch, capsys) -> None:
    """A bug inside a chunk: the traceback goes to stderr, `failed` holds it, and every job waiting is
    ended (done, with what it had) instead of hanging its client."""
    import jaxrnn.engine

    model, params, vocab = lm

    def boom(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(jaxrnn.engine, "decode_chunk", boom)
    broken = Engine(model, params, max_batch=2, chunk=4)
    broken.start()
    got = run_jobs(broken, [job(vocab, "the", 5), job(vocab, "time", 5), job(vocab, "a", 5)])
    broken.thread.join(10)
    assert not broken.thread.is_alive() and isinstance(broken.failed, ValueError)
    assert [len(g) for g in got] == [0, 0, 0] and "ValueError: a bug" in capsys.readouterr().err
