"""sample.py: jitted decoding against d2l's predict loop, batching, sampling and prompt errors."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn.cells import Loop
from jaxrnn.errors import JaxrnnError
from jaxrnn.models import ConciseRNNLM, ModelConfig, ScratchRNNLM
from jaxrnn.sample import Sampling, generate, predict, samples

H = 16


@pytest.fixture(scope="module", params=["scratch", "lstm-scratch", pytest.param("gru-flax", marks=pytest.mark.slow)])
def lm(request, tiny_corpus):
    """(model, params, vocab) with weights big enough that greedy decoding has clear winners: a tanh,
    an LSTM (a pair as state) and a Flax model (the concise tanh model decodes in test_cli.py)."""
    key, V = jax.random.key(1), len(tiny_corpus.vocab)
    cell = request.param.split("-")[0] if "-" in request.param else "rnn"
    if request.param in ("scratch", "lstm-scratch"):
        model = ScratchRNNLM(ModelConfig(V, H, Loop(cell)))
        params = ScratchRNNLM(ModelConfig(V, H, Loop(cell), sigma=0.5)).init(key)
    else:
        model = ConciseRNNLM(ModelConfig(V, H, Loop(cell)))
        params = model.init(key)
    params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.fold_in(key, a.size), a.shape), params)
    return model, params, tiny_corpus.vocab


# The sampling rules (seeds, temperature, top-k, top-p, unknown characters) act on the head's logits
# whatever the cell, and each test compiles its own decoding programs: they run on the tanh model;
# what depends on the cell (its state through the prefix, a batch, many samples) runs on all three (the
# Flax GRU with -m slow; the concise tanh model decodes by default in test_cli.py).
TANH = pytest.mark.parametrize("lm", ["scratch"], indirect=True)
TANH_AND_LSTM = pytest.mark.parametrize("lm", ["scratch", "lstm-scratch"], indirect=True)


def d2l_predict(model, params, vocab, prefix: str, num_preds: int) -> str:
    """d2l's predict: feed the prefix one character at a time, then append the argmax of each output."""
    forward = jax.jit(model.forward)
    state, outputs = model.init_state(1), [int(vocab.encode(prefix[0])[0])]
    for i in range(len(prefix) + num_preds - 1):
        logits, state = forward(params, jnp.array([[outputs[-1]]], jnp.int32), state)
        if i < len(prefix) - 1:
            outputs.append(int(vocab.encode(prefix[i + 1])[0]))
        else:
            top2 = np.sort(np.asarray(logits[0, 0]))[-2:]
            assert top2[1] - top2[0] > 1e-4  # a clear winner, so the comparison is not decided by rounding
            outputs.append(int(jnp.argmax(logits[0, 0])))
    return vocab.decode(outputs)


def test_predict_equals_d2l_loop(lm) -> None:
    model, params, vocab = lm
    with jax.default_matmul_precision("highest"):
        want = d2l_predict(model, params, vocab, "time traveller", 20)
        got = predict(model, params, vocab, "time traveller", 20)
    assert got == want and len(got.replace("<unk>", "?")) == len("time traveller") + 20
    assert len(set(got[14:])) > 1  # not one repeated character


def test_batch_of_prompts_equals_each_alone(lm) -> None:
    model, params, vocab = lm
    prompts = [vocab.encode(p) for p in ("time traveller", "a", "the machine")]
    with jax.default_matmul_precision("highest"):
        batch = generate(model, params, prompts, 20)
        alone = [generate(model, params, [p], 20)[0] for p in prompts]
    assert batch.shape == (3, 20) and batch.dtype == np.int32
    np.testing.assert_array_equal(batch, np.stack(alone))


@TANH
def test_sampling_is_seeded(lm) -> None:
    model, params, vocab = lm
    a = predict(model, params, vocab, "time traveller", 20, how=Sampling(temperature=1.0, seed=0))
    assert a == predict(model, params, vocab, "time traveller", 20, how=Sampling(temperature=1.0, seed=0))
    assert a != predict(model, params, vocab, "time traveller", 20, how=Sampling(temperature=1.0, seed=1))
    assert a.startswith("time traveller") and len(set(a[14:])) > 5
    last = Sampling(temperature=1.0, seed=2**32 - 1)
    top = predict(model, params, vocab, "time traveller", 20, how=last)
    assert top != a and top == predict(model, params, vocab, "time traveller", 20, how=last)
    for seed in (-1, 2**32):
        with pytest.raises(JaxrnnError, match=r"--seed must be in \[0, 2\*\*32\)"):
            predict(model, params, vocab, "time traveller", 20, how=Sampling(temperature=1.0, seed=seed))


@TANH
def test_sampling_follows_softmax_over_temperature(lm) -> None:
    """The first sampled token's frequencies over 4000 identical prompts match softmax(logits / T)."""
    model, params, vocab = lm
    prompt, temperature = vocab.encode("the"), 0.7
    p = first_token_probs(model, params, prompt, temperature)
    toks = generate(model, params, [prompt] * 4000, 1, how=Sampling(temperature=temperature, seed=3))[:, 0]
    freq = np.bincount(toks, minlength=len(vocab)) / len(toks)
    assert np.abs(freq - p).max() < 0.04  # about 5 standard errors
    assert p.max() < 0.9  # far from greedy, so the check means something


def first_token_probs(model, params, prompt: list[int], temperature: float) -> np.ndarray:
    """softmax(logits / T) of the token after `prompt`, in float64."""
    logits, _ = jax.jit(model.forward)(params, jnp.asarray(prompt)[None], model.init_state(1))
    z = np.asarray(logits[0, -1], np.float64) / temperature
    return np.exp(z - z.max()) / np.exp(z - z.max()).sum()


@TANH
@pytest.mark.parametrize("top_k, nucleus", [(3, None), (0, 3), (5, 3)])
def test_top_k_and_top_p_sample_from_the_renormalised_head(lm, top_k: int, nucleus: int | None) -> None:
    """Over 4000 identical prompts the first token only ever comes from the top k, and then from the
    smallest set of the most likely of those whose (renormalised) probability reaches p, as Hugging
    Face's warpers do; frequencies follow the renormalised probabilities. p is set from the
    distribution so that the nucleus holds `nucleus` tokens."""
    model, params, vocab = lm
    prompt, temperature = vocab.encode("the"), 1.5
    p = first_token_probs(model, params, prompt, temperature)
    order = np.argsort(-p)
    q = p[order][: top_k or len(p)] / p[order][: top_k or len(p)].sum()  # after top-k, most likely first
    top_p = 1.0 if nucleus is None else float(q[: nucleus - 1].sum() + 0.5 * q[nucleus - 1])
    kept = (np.cumsum(q) - q) < top_p
    assert kept.sum() == (nucleus or top_k)
    want = np.zeros_like(p)
    want[order[: len(q)][kept]] = q[kept] / q[kept].sum()
    how = Sampling(temperature=temperature, seed=5, top_k=top_k, top_p=top_p)
    toks = generate(model, params, [prompt] * 4000, 1, how=how)
    freq = np.bincount(toks[:, 0], minlength=len(vocab)) / len(toks)
    assert set(np.flatnonzero(freq)) <= set(np.flatnonzero(want))
    assert np.abs(freq - want).max() < 0.04  # about 5 standard errors


@TANH
def test_top_k_one_is_greedy(lm) -> None:
    model, params, vocab = lm
    greedy = predict(model, params, vocab, "time traveller", 20)  # 20 throughout: one compile per shape
    assert predict(model, params, vocab, "time traveller", 20, how=Sampling(temperature=0.8, seed=2, top_k=1)) == greedy


def test_zero_predictions_return_prefix(lm) -> None:
    model, params, vocab = lm
    assert predict(model, params, vocab, "time traveller", 0) == "time traveller"
    assert generate(model, params, [vocab.encode("ab"), vocab.encode("c")], 0).shape == (2, 0)


def test_bad_prompts_raise(lm) -> None:
    model, params, vocab = lm
    with pytest.raises(JaxrnnError, match="empty"):
        predict(model, params, vocab, "", 5)
    with pytest.raises(JaxrnnError, match="empty"):
        generate(model, params, [vocab.encode("a"), np.zeros(0, np.int32)], 5)
    with pytest.raises(JaxrnnError, match="num-preds"):
        predict(model, params, vocab, "time", -1)


@TANH
def test_unknown_prompt_chars_warn_and_read_as_unk(lm, capsys) -> None:
    model, params, vocab = lm
    got = predict(model, params, vocab, "Time traveller!", 20)
    err = capsys.readouterr().err
    assert "warning" in err and "'T!'" in err
    ids = vocab.encode("time traveller ")
    ids[0], ids[-1] = vocab.unk, vocab.unk
    assert got == "Time traveller!" + vocab.decode(generate(model, params, [ids], 20)[0])
    predict(model, params, vocab, "time traveller", 20)
    assert capsys.readouterr().err == ""  # no warning when every character is known


@pytest.mark.parametrize("kw, flag", [({"top_k": -1, "temperature": 1.0}, "--top-k"),
                                      ({"top_p": 0.0, "temperature": 1.0}, "--top-p"),
                                      ({"top_p": 1.5, "temperature": 1.0}, "--top-p"),
                                      ({"top_k": 3}, "--temperature > 0")])
def test_invalid_top_k_top_p_raise(tiny_corpus, kw: dict, flag: str) -> None:
    model = ScratchRNNLM(ModelConfig(len(tiny_corpus.vocab), 4))
    with pytest.raises(JaxrnnError, match=re.escape(flag)):
        predict(model, model.init(jax.random.key(0)), tiny_corpus.vocab, "time", 5, Sampling(**kw))


@TANH_AND_LSTM
def test_samples_draw_independently(lm) -> None:
    model, params, vocab = lm
    texts = samples(model, params, vocab, "time traveller", 20, 4, how=Sampling(temperature=1.0, seed=0))
    assert len(texts) == 4 and len(set(texts)) == 4 and all(t.startswith("time traveller") for t in texts)
    assert texts[0] == samples(model, params, vocab, "time traveller", 20, 4, Sampling(temperature=1.0, seed=0))[0]
    greedy = predict(model, params, vocab, "time traveller", 20)
    assert samples(model, params, vocab, "time traveller", 20, 4) == [greedy] * 4


@pytest.mark.parametrize("temperature", [-1.0, math.nan])
def test_invalid_temperature_raises(tiny_corpus, temperature: float) -> None:
    model = ScratchRNNLM(ModelConfig(len(tiny_corpus.vocab), 4))
    with pytest.raises(JaxrnnError, match="temperature"):
        predict(model, model.init(jax.random.key(0)), tiny_corpus.vocab, "time", 5, Sampling(temperature=temperature))
