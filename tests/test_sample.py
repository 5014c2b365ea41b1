"""sample.py: jitted decoding against d2l's predict loop, batching, sampling and prompt errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn.errors import JaxrnnError
from jaxrnn.models import ConciseRNNLM, ScratchRNNLM
from jaxrnn.sample import generate, predict

H = 16


@pytest.fixture(scope="module", params=["scratch", "concise"])
def lm(request, tiny_corpus):
    """(model, params, vocab) with weights big enough that greedy decoding has clear winners."""
    key, V = jax.random.key(1), len(tiny_corpus.vocab)
    if request.param == "scratch":
        model = ScratchRNNLM(V, H)
        params = ScratchRNNLM(V, H, sigma=0.5).init(key)
    else:
        model = ConciseRNNLM(V, H)
        params = model.init(key)
    params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.fold_in(key, a.size), a.shape), params)
    return model, params, tiny_corpus.vocab


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
    assert got == want and len(got) == len("time traveller") + 20
    assert len(set(got[14:])) > 1  # not one repeated character


def test_batch_of_prompts_equals_each_alone(lm) -> None:
    model, params, vocab = lm
    prompts = [vocab.encode(p) for p in ("time traveller", "a", "the machine")]
    with jax.default_matmul_precision("highest"):
        batch = generate(model, params, prompts, 20)
        alone = [generate(model, params, [p], 20)[0] for p in prompts]
    assert batch.shape == (3, 20) and batch.dtype == np.int32
    np.testing.assert_array_equal(batch, np.stack(alone))


def test_sampling_is_seeded(lm) -> None:
    model, params, vocab = lm
    a = predict(model, params, vocab, "time traveller", 20, temperature=1.0, seed=0)
    assert a == predict(model, params, vocab, "time traveller", 20, temperature=1.0, seed=0)
    assert a != predict(model, params, vocab, "time traveller", 20, temperature=1.0, seed=1)
    assert a.startswith("time traveller") and len(set(a[14:])) > 5


def test_sampling_follows_softmax_over_temperature(lm) -> None:
    """The first sampled token's frequencies over 4000 identical prompts match softmax(logits / T)."""
    model, params, vocab = lm
    prompt, temperature = vocab.encode("the"), 0.7
    logits, _ = jax.jit(model.forward)(params, jnp.asarray(prompt)[None], model.init_state(1))
    z = np.asarray(logits[0, -1], np.float64) / temperature
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    toks = generate(model, params, [prompt] * 4000, 1, temperature=temperature, seed=3)[:, 0]
    freq = np.bincount(toks, minlength=len(vocab)) / len(toks)
    assert np.abs(freq - p).max() < 0.04  # about 5 standard errors
    assert p.max() < 0.9  # far from greedy, so the check means something


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


@pytest.mark.parametrize("temperature", [-1.0, math.nan])
def test_invalid_temperature_raises(tiny_corpus, temperature: float) -> None:
    model = ScratchRNNLM(len(tiny_corpus.vocab), 4)
    with pytest.raises(JaxrnnError, match="temperature"):
        predict(model, model.init(jax.random.key(0)), tiny_corpus.vocab, "time", 5, temperature=temperature)
