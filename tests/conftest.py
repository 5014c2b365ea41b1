"""Shared fixtures: the corpus location, PRNG keys, the real corpus, tiny configs and float64 references."""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"  # The Time Machine and what d2l's own code makes of it (tools/d2l_baseline.py)
# The corpus comes from the repo, whatever the user's environment or cache holds: no network, no setup.
os.environ["JAXRNN_DATA_DIR"] = str(DATA)
# One persistent compilation cache for the whole session, shared by in-process runs, the CLI
# subprocesses (which leave a user-set JAX cache alone) and the pytest-xdist workers (started after this
# file runs in the controller, they inherit its environment): the same tiny programs compile once, not in
# every test that trains. A fresh directory per session, so no test sees programs from another.
if "JAXRNN_TEST_XLA_CACHE" not in os.environ:  # the controller, or a run without workers
    os.environ["JAXRNN_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="jaxrnn-test-xla-")
    atexit.register(shutil.rmtree, os.environ["JAXRNN_TEST_XLA_CACHE"], ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["JAXRNN_TEST_XLA_CACHE"]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
# The tests compile far more than they compute: XLA's CPU backend without LLVM's optimization passes
# compiles them about a third faster. It rounds differently in places (no fused multiply-adds, say), so
# a long run drifts from a user's: the CLI subprocesses inherit it, so in-process and CLI runs still
# agree bit for bit, and `user_python` runs a command with the user's own flags (the README's headline).
USER_XLA_FLAGS = os.environ.get("JAXRNN_TEST_USER_XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
os.environ["JAXRNN_TEST_USER_XLA_FLAGS"] = USER_XLA_FLAGS  # for the xdist workers, which inherit the next line
os.environ["XLA_FLAGS"] = f"{USER_XLA_FLAGS} --xla_backend_optimization_level=0".strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxrnn import parallel  # noqa: E402
from jaxrnn.config import Config  # noqa: E402
from jaxrnn.data import Corpus, load_corpus  # noqa: E402

# One CPU device per core, as the CLI makes them, so that in-process runs and CLI runs agree bit for bit.
parallel.use_cpu_cores(None, 1024)

# unroll=1 halves compile times; the unrolled recurrence is checked against unroll=1 in test_cells/test_models.
TINY = dict(epochs=1, hidden=16, num_train=512, num_val=256, batch_size=128, num_steps=8, save_every=1, unroll=1)


@pytest.fixture
def key() -> jax.Array:
    """A fresh PRNG key; split it for more."""
    return jax.random.key(0)


@pytest.fixture(scope="session")
def corpus() -> Corpus:
    """The Time Machine with d2l's defaults (num_steps 32, 10000 train and 5000 validation windows)."""
    return load_corpus()


@pytest.fixture(scope="session")
def tiny_cfg() -> Callable[..., Config]:
    """A factory of fast configs: `tiny_cfg(epochs=2, model="concise")`."""
    return lambda **changes: Config(**{**TINY, **changes})


@pytest.fixture(scope="session")
def tiny_corpus() -> Corpus:
    """The corpus windowed for the tiny config."""
    return load_corpus(None, TINY["num_steps"], TINY["num_train"], TINY["num_val"])


def np_lm_forward(p: dict[str, np.ndarray], tokens_BxT: np.ndarray, h_BxH: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d2l's RNNLMScratch in float64 numpy: one-hot -> tanh RNN loop -> linear head; (logits [B, T, V], h)."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    x_BxTxV = np.eye(p["W_xh"].shape[0])[tokens_BxT]
    h, outs = np.asarray(h_BxH, np.float64), []
    for t in range(tokens_BxT.shape[1]):
        h = np.tanh(x_BxTxV[:, t] @ p["W_xh"] + h @ p["W_hh"] + p["b_h"])
        outs.append(h @ p["W_hq"] + p["b_q"])
    return np.stack(outs, axis=1), h


def np_cross_entropy(logits_BxTxV: np.ndarray, y_BxT: np.ndarray) -> np.ndarray:
    """Per-token cross-entropy from a float64 log-softmax."""
    z = logits_BxTxV - logits_BxTxV.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, y_BxT[..., None], -1)[..., 0]


def flat_scratch(params) -> dict[str, np.ndarray]:
    """ScratchRNNLM params as one flat dict of float64 arrays (W_xh, W_hh, b_h, W_hq, b_q)."""
    return {k: np.asarray(v, np.float64) for k, v in {**params["rnn"], **params["head"]}.items()}


def _flax_cell(cell: str, r: dict) -> dict:
    """One scratch layer's weights in the Flax cell's layout. Flax puts the LSTM's bias on the hidden
    side and the GRU's r, z, n biases on the input side; sums are what count."""
    if cell == "rnn":
        return {"i": {"kernel": r["W_xh"], "bias": r["b_h"]}, "h": {"kernel": r["W_hh"]}}
    names = "ifgo" if cell == "lstm" else "rzn"
    W_x, W_h, b = (jnp.split(r[k], len(names), axis=-1) for k in ("W_xh", "W_hh", "b_h"))
    if cell == "lstm":
        rnn = {f"i{g}": {"kernel": W_x[k]} for k, g in enumerate(names)}
        rnn.update({f"h{g}": {"kernel": W_h[k], "bias": b[k]} for k, g in enumerate(names)})
    else:
        rnn = {f"i{g}": {"kernel": W_x[k], "bias": b[k]} for k, g in enumerate(names)}
        rnn.update({f"h{g}": {"kernel": W_h[k]} for k, g in enumerate(names)})
        rnn["hn"]["bias"] = r["b_hn"]
    return rnn


def as_flax(cell: str, p: dict) -> dict:
    """A scratch LM's weights (any layers, embedding, tied head) in the Flax twin's layout."""
    out = {}
    for name, r in p.items():
        if name == "head":
            out.update({"head": {"kernel": r["W_hq"], "bias": r["b_q"]}} if "W_hq" in r else {"head_bias": r["b_q"]})
        elif name == "embed":
            out["embed"] = {"embedding": r["E"]}
        else:
            out[name] = _flax_cell(cell, r)
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _np_minlstm(p: dict, h, xs: np.ndarray):
    """Feng et al. 2024, minLSTM in sequential mode: f' = f / (f + i), i' = i / (f + i), h = f' h + i' h~."""
    (W_f, W_i, W_c), (b_f, b_i, b_c) = (np.split(p[k], 3, axis=-1) for k in ("W_xh", "b_h"))
    h, hs = np.asarray(h, np.float64), []
    for x in xs:
        f, i = _sigmoid(x @ W_f + b_f), _sigmoid(x @ W_i + b_i)
        h = f / (f + i) * h + i / (f + i) * (x @ W_c + b_c)
        hs.append(h)
    return h, np.stack(hs)


def _np_lru(p: dict, state, xs: np.ndarray):
    """Orvieto et al. 2023 in complex numpy: h = lambda h + gamma (x B), y = Re(h C) + x D, with
    lambda = exp(-exp(nu) + i exp(theta)), gamma = sqrt(1 - |lambda|^2), B = W_re + i W_im."""
    (W_re, W_im, W_d), (b_re, b_im, b_d) = (np.split(p[k], 3, axis=-1) for k in ("W_xh", "b_h"))
    lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
    gamma = np.sqrt(1 - np.abs(lam) ** 2)
    C = p["C_re"] + 1j * p["C_im"]
    h, ys = np.asarray(state[0], np.float64) + 1j * np.asarray(state[1], np.float64), []
    for x in xs:
        h = lam * h + gamma * (x @ W_re + b_re + 1j * (x @ W_im + b_im))
        ys.append((h @ C).real + x @ W_d + b_d)
    return (h.real, h.imag), np.stack(ys)


def _np_rglru(p: dict, h, xs: np.ndarray):
    """De et al. 2024, the RG-LRU: r, i sigmoid gates; a = sigmoid(Lambda) ** (8 r); h = a h + sqrt(1 - a^2)
    (i x); the output Hawk's gelu(x W_g) * h (gelu in its tanh form, jax's default)."""
    (W_a, W_i, W_v, W_g), (b_a, b_i, b_v, b_g) = (np.split(p[k], 4, axis=-1) for k in ("W_xh", "b_h"))
    h, ys = np.asarray(h, np.float64), []
    for x in xs:
        a = _sigmoid(p["Lambda"]) ** (8 * _sigmoid(x @ W_a + b_a))
        h = a * h + np.sqrt(1 - a**2) * (_sigmoid(x @ W_i + b_i) * (x @ W_v + b_v))
        g = x @ W_g + b_g
        gelu = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
        ys.append(gelu * h)
    return h, np.stack(ys)


def _np_slstm(p: dict, state, xs: np.ndarray):
    """Beck et al. 2024, the sLSTM, head by head with an explicit block-diagonal R (heads K): exponential
    input and forget gates, stabiliser m, normaliser n; each head's output normalised (mean 0, variance 1,
    eps 1e-6) and scaled by `norm`."""
    K, D, _ = p["R"].shape
    R = np.zeros((K * D, 4 * K * D))
    for k in range(K):  # head k's block: its rows of h to its columns of each gate
        for g in range(4):
            R[k * D:(k + 1) * D, g * K * D + k * D:g * K * D + (k + 1) * D] = p["R"][k][:, g * D:(g + 1) * D]
    h, c, n, m = (np.asarray(a, np.float64) for a in state)
    ys = []
    for x in xs:
        i_, f_, z_, o_ = np.split(x @ p["W_xh"] + p["b_h"] + h @ R, 4, axis=-1)
        m_new = np.maximum(f_ + m, i_)
        i, f = np.exp(i_ - m_new), np.exp(f_ + m - m_new)
        c, n, m = f * c + i * np.tanh(z_), f * n + i, m_new
        h = _sigmoid(o_) * c / n
        heads = h.reshape(len(h), K, D)
        normed = (heads - heads.mean(-1, keepdims=True)) / np.sqrt(heads.var(-1, keepdims=True) + 1e-6)
        ys.append(normed.reshape(h.shape) * p["norm"])
    return (h, c, n, m), np.stack(ys)


RECENT = {"minlstm": _np_minlstm, "lru": _np_lru, "rglru": _np_rglru, "slstm": _np_slstm}
"""The float64 references of the cells of the last decade, each from its paper's equations."""


def np_cell_run(cell: str, p: dict, state, x_TxBxI: np.ndarray):
    """d2l's cells (and minGRU, IndRNN) in float64 numpy, one gate at a time, over inputs [T, B, I]
    (one-hot rows or dense vectors): (last state, all h [T, B, H])."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    if cell == "indrnn":  # Li et al. 2018: h = relu(x W + u * h + b), u a vector
        h, hs = np.asarray(state, np.float64), []
        for x in np.asarray(x_TxBxI, np.float64):
            h = np.maximum(x @ p["W_xh"] + p["u"] * h + p["b_h"], 0)
            hs.append(h)
        return h, np.stack(hs)
    if cell in RECENT:
        return RECENT[cell](p, state, np.asarray(x_TxBxI, np.float64))
    if cell == "mingru":  # Feng et al. 2024, minGRU in sequential mode: gates z and candidate h~ read only x
        (W_z, W_c), (b_z, b_c) = (np.split(p[k], 2, axis=-1) for k in ("W_xh", "b_h"))
        h, hs = np.asarray(state, np.float64), []
        for x in np.asarray(x_TxBxI, np.float64):
            z = _sigmoid(x @ W_z + b_z)
            h = (1 - z) * h + z * (x @ W_c + b_c)
            hs.append(h)
        return h, np.stack(hs)
    gates = {"rnn": 1, "lstm": 4, "gru": 3, "gru-d2l": 3}[cell]
    W_x, W_h, b = (np.split(p[k], gates, axis=-1) for k in ("W_xh", "W_hh", "b_h"))
    h, c = (np.asarray(s, np.float64) for s in state) if cell == "lstm" else (np.asarray(state, np.float64), None)
    hs = []
    for x in np.asarray(x_TxBxI, np.float64):
        if cell == "rnn":
            h = np.tanh(x @ W_x[0] + h @ W_h[0] + b[0])
        elif cell == "lstm":  # gates i, f, g (candidate), o
            i, f, o = (_sigmoid(x @ W_x[k] + h @ W_h[k] + b[k]) for k in (0, 1, 3))
            c = f * c + i * np.tanh(x @ W_x[2] + h @ W_h[2] + b[2])
            h = o * np.tanh(c)
        else:  # gates r, z, n
            r, z = (_sigmoid(x @ W_x[k] + h @ W_h[k] + b[k]) for k in (0, 1))
            if cell == "gru":  # Flax's and cuDNN's form; gru-d2l is d2l's
                n = np.tanh(x @ W_x[2] + b[2] + r * (h @ W_h[2] + p["b_hn"]))
            else:
                n = np.tanh(x @ W_x[2] + (r * h) @ W_h[2] + b[2])
            h = z * h + (1 - z) * n
        hs.append(h)
    return ((h, c) if cell == "lstm" else h), np.stack(hs)


@pytest.fixture(scope="session")
def ref() -> SimpleNamespace:
    """The float64 numpy references and weight converters: ref.lm_forward, ref.cell_run, ref.cross_entropy,
    ref.flat, ref.as_flax."""
    return SimpleNamespace(lm_forward=np_lm_forward, cell_run=np_cell_run, cross_entropy=np_cross_entropy,
                           flat=flat_scratch, as_flax=as_flax)


def max_diff(a: object, b: object) -> float:
    """The largest absolute difference between two pytrees' leaves (params, say)."""
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in pairs)


def state_leaves(run_dir: Path, step: int | str | None = None) -> dict[str, np.ndarray]:
    """Every leaf of a run's restored TrainState (params, optimizer state, step), by path: what a resumed
    run must match bit for bit."""
    from jaxrnn import load

    state = load(run_dir, step).state._asdict()
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(state)}


def load_tool(name: str) -> ModuleType:
    """Import tools/<name>.py as a module (tools/ is not a package; its scripts import their toolcli.py, so
    tools/ goes on sys.path as for a script run from there)."""
    if str(ROOT / "tools") not in sys.path:
        sys.path.insert(0, str(ROOT / "tools"))
    return load_module(ROOT / "tools" / f"{name}.py", f"tool_{name}")


def load_module(path: Path, name: str | None = None) -> ModuleType:
    """Import a script (of tools/, docs/) as a module."""
    spec = importlib.util.spec_from_file_location(name or f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def _child_env() -> dict[str, str]:
    # The checkout goes first on PYTHONPATH: a child process in another cwd imports this code, whatever is installed.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def _run(args: Sequence[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_child_env(), capture_output=True, text=True,
                          timeout=timeout)


def _start(args: Sequence[str], cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env={**_child_env(), **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="session")
def user_python() -> Callable[..., subprocess.CompletedProcess]:
    """Run `python ARGS...` in a fresh process as a user runs it: XLA with its own optimizations."""
    def run(args: Sequence[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
        env = {**_child_env(), "XLA_FLAGS": USER_XLA_FLAGS}
        return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    return run


@pytest.fixture(scope="session")
def run_python() -> Callable[..., subprocess.CompletedProcess]:
    """Run `python ARGS...` in a fresh process on this checkout (cwd given), capturing text output."""
    return _run


@pytest.fixture(scope="session")
def start_python() -> Callable[..., subprocess.Popen]:
    """Start `python ARGS...` like run_python but without waiting: a Popen (text pipes) to signal or kill;
    keyword arguments add environment variables."""
    return _start


@contextlib.contextmanager
def _inside(cwd: Path):
    """chdir to `cwd` and capture stdout and stderr as text (the in-process twin of a child process)."""
    out, err, old = io.StringIO(), io.StringIO(), Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield out, err
    finally:
        os.chdir(old)


def _exit_code(e: SystemExit) -> int:
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)


def _call(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
    """`jaxrnn ARGS` or `python SCRIPT.py ARGS` in this process: no interpreter start or JAX import per
    command, and compiled programs shared. An exception that escapes is a test failure, as a traceback is."""
    args = [str(a) for a in args]
    with _inside(cwd) as (out, err):
        try:
            if args[0].endswith(".py"):
                script = Path(args[0]).absolute()
                old_argv, old_path = sys.argv, list(sys.path)
                sys.argv, sys.path = [str(script), *args[1:]], [str(script.parent), *sys.path]
                try:
                    runpy.run_path(str(script), run_name="__main__")
                    code = 0
                finally:
                    sys.argv, sys.path = old_argv, old_path
            else:
                from jaxrnn.cli import main

                code = main(args)
        except SystemExit as e:
            code = _exit_code(e)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def call() -> Callable[..., subprocess.CompletedProcess]:
    """Run `jaxrnn ARGS` (`call(["train", ...], cwd)`) or an experiment script (`call(["x.py", ...], cwd)`)
    in this process, with a CompletedProcess as a child would give (returncode, stdout, stderr)."""
    return _call
