"""`jaxrnn export`: the decoder as a jax.export program, run in a venv that has jax but no jaxrnn, prints
`jaxrnn sample`'s greedy text; the weights with model.json drive the numpy sampler of docs/ to the same."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import ROOT, TINY, load_module

import jaxrnn
from jaxrnn import run
from jaxrnn.export import export_run

PROMPTS = ["time traveller", "The Time-Machine!", "a" * 37]  # shorter and longer than a chunk, one read as d2l's


@pytest.fixture(scope="module", params=["gru-scratch", pytest.param("lstm-flax", marks=pytest.mark.slow)])
def exported(request, tmp_path_factory, call) -> tuple[Path, Path]:
    """(run directory, export directory) of a tiny model with large random weights (varied greedy text)."""
    cell, impl = request.param.split("-")
    work = tmp_path_factory.mktemp(f"export-{request.param}")
    cfg = jaxrnn.Config(**{**TINY, "cell": cell, "impl": impl, "sigma": 0.5, "hidden": 32, "lr": 0.01})
    jaxrnn.train(cfg, work / "run", progress=False)
    proc = call(["export", "--run", str(work / "run"), "--out", str(work / "exported")], work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"exported {work / 'run'} (epoch 1) to {work / 'exported'}: ")
    return work / "run", work / "exported"


@pytest.fixture(scope="module")
def jax_only_python(tmp_path_factory) -> Path:
    """A venv whose Python sees this environment's packages (jax, numpy, flatbuffers) but not jaxrnn: its
    site-packages is on sys.path through a .pth file, which does not run the .pth files there (jaxrnn's
    editable install is one of those)."""
    venv = tmp_path_factory.mktemp("jax-only") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "packages.pth").write_text(str(Path(jax.__file__).parents[1]) + "\n")
    python = venv / "bin" / "python"
    probe = subprocess.run([python, "-c", "import jax, numpy\ntry:\n import jaxrnn\nexcept ImportError:\n print('no')"],
                           capture_output=True, text=True, cwd=venv, env={"PATH": "/usr/bin:/bin"})
    assert probe.stdout.strip() == "no", probe.stderr
    return python


def test_the_exported_decoder_runs_without_jaxrnn(exported, jax_only_python) -> None:
    """docs/sample_exported.py, run as a script for one prompt and as a function for the others."""
    run_dir, out = exported
    script = ROOT / "docs" / "sample_exported.py"
    proc = subprocess.run([jax_only_python, script, out, PROMPTS[0], "70"], capture_output=True, text=True,
                          cwd=out, env={"PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == run.load(run_dir).predict(PROMPTS[0], 70) + "\n"
    code = (f"import sys, json; sys.path.insert(0, {str(script.parent)!r}); from sample_exported import sample; "
            f"print(json.dumps([sample(sys.argv[1], p, 70) for p in sys.argv[2:]]))")
    proc = subprocess.run([jax_only_python, "-c", code, out, *PROMPTS[1:]], capture_output=True, text=True,
                          cwd=out, env={"PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [run.load(run_dir).predict(p, 70) for p in PROMPTS[1:]]


NUMPY = load_module(ROOT / "docs" / "sample_numpy.py")


def test_the_numpy_sampler_reproduces_jaxrnn_sample(exported) -> None:
    """docs/sample_numpy.py (under 60 lines) on weights.npz and model.json's equations."""
    run_dir, out = exported
    assert len((ROOT / "docs" / "sample_numpy.py").read_text().splitlines()) < 60
    for prompt in PROMPTS:
        assert NUMPY.sample(out, prompt, 70) == run.load(run_dir).predict(prompt, 70)


@pytest.mark.slow
@pytest.mark.parametrize("cell, impl", [("rnn", "flax"), ("lstm", "scratch"), ("gru", "flax")])
def test_the_weights_layout_holds_for_depth_embedding_and_tying(tmp_path, cell: str, impl: str) -> None:
    """Two layers, an embedding and a tied head: the numpy sampler's text is still `predict`'s."""
    cfg = jaxrnn.Config(**{**TINY, "cell": cell, "impl": impl, "sigma": 0.5, "hidden": 16, "lr": 0.01, "layers": 2,
                           "embed": 16, "tie": True})
    t = jaxrnn.train(cfg, tmp_path / "run", progress=False)
    if impl == "flax":  # Flax's default init is too small for varied greedy text
        t = dataclasses.replace(t, state=t.state._replace(params=jax.tree.map(
            lambda a: a + 0.5 * jax.random.normal(jax.random.key(a.size), a.shape), t.params)))
    export_run(t, tmp_path / "out")
    for prompt in PROMPTS:
        assert NUMPY.sample(tmp_path / "out", prompt, 50) == t.predict(prompt, 50)


def test_model_json_says_what_the_run_was(exported) -> None:
    run_dir, out = exported
    meta, t = json.loads((out / "model.json").read_text()), run.load(run_dir)
    assert meta["vocab"] == list(t.vocab.idx_to_token) and meta["unk"] == t.vocab.unk
    assert (meta["cell"], meta["impl"], meta["hidden"], meta["epoch"]) == (t.cfg.cell, t.cfg.impl, 32, 1)
    assert meta["platforms"] == ["cpu", "cuda"]
    with np.load(out / "weights.npz") as w:
        assert meta["weights"]["shapes"] == {k: list(w[k].shape) for k in w.files}
    assert meta["weights"]["shapes"]["0.W_hh"] == [32, {"gru": 96, "lstm": 128}[t.cfg.cell]]


def test_export_refuses_a_file_as_out(call, tmp_path, exported) -> None:
    (tmp_path / "file").write_text("x")
    proc = call(["export", "--run", str(exported[0]), "--out", str(tmp_path / "file")], tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("jaxrnn: error: ")
    assert (tmp_path / "file").read_text() == "x"
