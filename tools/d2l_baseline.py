"""Run d2l's own published JAX code (package d2l==1.0.3, module d2l/jax.py) to make our reference figures.

usage: python tools/d2l_baseline.py reference [--data FILE] [--out FILE]
       python tools/d2l_baseline.py train {scratch,concise} [--data FILE] [--epochs N]

`reference` runs d2l's TimeMachine._preprocess, _tokenize, Vocab and TimeMachine.__init__'s windowing
(num_steps 32) on timemachine.txt and writes what tests/test_data.py checks jaxrnn's data pipeline
against (default: tests/data/d2l_timemachine.json). `train` trains the chapter's model (RNN from
scratch, d2l 9.5, or the concise one, 9.6) at the seed config (hidden 32, batch 1024, 32 steps, lr 1,
gradient clip 1, 100 epochs) with d2l's Trainer, and prints one JSON line on stdout: times (setup_s
before training, most of it d2l's jnp.array of 173k Python lists of windows; total_s of Trainer.fit;
its first and median epoch), the validation perplexity d2l's ProgressBoard records and d2l's
`predict('time traveller', 20)`.
tools/seed_vs_d2l.py times this command against `jaxrnn train`.

d2l is pip-installed once with --no-deps into $XDG_CACHE_HOME/jaxrnn/d2l-1.0.3 (or ~/.cache/...) and
imported from there, so none of its pinned dependencies touch the environment. The corpus is always
read from --data (default tests/data/timemachine.txt in this repo), never downloaded. The model, loss,
optimizer, Trainer loop, preprocessing and vocabulary are d2l's; what is patched, and why:

- tensorflow, tensorflow_datasets, IPython, pandas, requests, matplotlib_inline are imported by
  d2l/jax.py at module level (for notebooks, datasets and downloads) but nothing used here calls
  them, so empty stand-in modules satisfy the imports (a module already imported is left alone).
- d2l's data loader is tf.data (`DataModule.get_tensorloader`); a numpy loader with the same
  behaviour (train shuffled every epoch, validation in order, last batch kept) replaces it, and
  `TimeMachine._download` reads --data instead of fetching d2l's server.
- d2l's ProgressBoard redraws a notebook figure at every point; its `display` is turned off, so it
  still records the points (the val_ppl we report) but draws nothing.
- d2l/jax.py calls `random.randint(0, 1e6)` at import time, which Python >= 3.12 refuses (a float
  bound); randint accepts it while d2l is imported, and `d2l.get_seed` is redefined with an int.
- d2l's Trainer.fit annotates a field with `jax.random.PRNGKeyArray`, which jax removed: it is
  aliased to `jax.Array` when missing.
- d2l-jax's Trainer.fit_epoch never calls `clip_gradients` (the PyTorch one does), so the chapter's
  gradient clipping (global norm 1) is added as an optax step before SGD, which is the same formula.
- d2l-jax's concise chapter has no tanh RNN (its `d2l.RNN` is a placeholder that raises: Flax had no cell
  for it then); the concise model is `nn.scan` over `nn.SimpleCell`, written like d2l's own GRU class.
- d2l's `predict` converts a shape-(1,) array with int(), which new jax refuses; the only change in
  the copy below is reshaping to a scalar first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

from toolcli import Parser, ToolError, positive_int, run_main

START = time.perf_counter()  # setup_s: imports, d2l's install check and import, TimeMachine's windows

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "tests" / "data" / "timemachine.txt"
DEFAULT_REF = ROOT / "tests" / "data" / "d2l_timemachine.json"
D2L_VERSION = "1.0.3"
# The seed config, the chapters' settings: hidden 32, batch 1024, 32 steps, lr 1, clip 1, 100 epochs.
HIDDEN, BATCH_SIZE, NUM_STEPS, LR, CLIP, EPOCHS = 32, 1024, 32, 1.0, 1.0, 100
NUM_TRAIN, NUM_VAL = 10000, 5000  # TimeMachine's default split
# Imported by d2l/jax.py at module level and never called on the code paths used here.
STUBBED = ["tensorflow", "tensorflow_datasets", "IPython", "IPython.display", "pandas", "requests",
           "matplotlib_inline", "matplotlib_inline.backend_inline"]


def log(msg: str) -> None:
    print(f"d2l_baseline: {msg}", file=sys.stderr, flush=True)


def d2l_dir() -> Path:
    """Where d2l is installed: $XDG_CACHE_HOME/jaxrnn/d2l-1.0.3, else ~/.cache/jaxrnn/d2l-1.0.3."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxrnn" / f"d2l-{D2L_VERSION}"


def install_d2l() -> Path:
    """pip-install d2l (no dependencies) into d2l_dir() unless it is there; returns the directory."""
    target = d2l_dir()
    if (target / "d2l" / "jax.py").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f"{target.name}.part{os.getpid()}")  # one per process; renamed when complete
    spec = f"d2l=={D2L_VERSION}"
    log(f"installing {spec} (--no-deps) into {target}")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--target", str(part), spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not (part / "d2l" / "jax.py").is_file():
        shutil.rmtree(part, ignore_errors=True)
        sys.stderr.write(proc.stdout + proc.stderr)
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise ToolError(f"pip could not install {spec} into {target} ({lines[-1] if lines else 'no output'}); "
                        f"check the network or your pip index, or run "
                        f"'{sys.executable} -m pip install --no-deps --target {target} {spec}' yourself")
    try:
        part.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(part, ignore_errors=True)
    return target


def import_d2l() -> types.ModuleType:
    """`from d2l import jax as d2l`, from the cache, with the patches the module docstring lists."""
    sys.path.insert(0, str(install_d2l()))
    for name in STUBBED:
        sys.modules.setdefault(name, types.ModuleType(name))
    ipython, inline = sys.modules["IPython"], sys.modules["matplotlib_inline"]
    if not hasattr(ipython, "display"):  # `from IPython import display` wants the attribute
        ipython.display = sys.modules["IPython.display"]
    if not hasattr(inline, "backend_inline"):
        inline.backend_inline = sys.modules["matplotlib_inline.backend_inline"]

    import matplotlib

    matplotlib.use("Agg")  # d2l imports pyplot; no window system is needed or wanted
    import jax

    if not hasattr(jax.random, "PRNGKeyArray"):
        jax.random.PRNGKeyArray = jax.Array
    randint = random.randint
    random.randint = lambda a, b: randint(int(a), int(b))  # d2l's randint(0, 1e6) at import time
    try:
        from d2l import jax as d2l
    finally:
        random.randint = randint
    d2l.get_seed = lambda: random.randint(0, 10**6)
    return d2l


def read_corpus(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ToolError(f"cannot read {path} ({e}); pass --data FILE with The Time Machine's text") from None


def make_data_module(d2l: types.ModuleType, path: Path) -> Any:
    """A d2l.TimeMachine subclass reading `path`, with a numpy loader in place of tf.data."""
    import numpy as np

    text = read_corpus(path)

    class LocalTimeMachine(d2l.TimeMachine):
        def _download(self) -> str:
            return text

        def get_tensorloader(self, tensors, train, indices=slice(0, None)):
            # d2l: tf.data.Dataset.from_tensor_slices(...).shuffle(all if train else 1).batch(batch_size)
            arrays = tuple(np.asarray(a)[indices] for a in tensors)
            return NumpyLoader(arrays, self.batch_size, shuffle=train)

    return LocalTimeMachine


class NumpyLoader:
    """Batches of `arrays` along axis 0; reshuffled on every pass when `shuffle`; the last batch kept."""

    def __init__(self, arrays: tuple, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        import numpy as np

        self.arrays, self.batch_size, self.shuffle = arrays, batch_size, shuffle
        self.n = arrays[0].shape[0]
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self):
        import numpy as np

        order = self.rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        for i in range(0, self.n, self.batch_size):
            idx = order[i:i + self.batch_size]
            yield tuple(a[idx] for a in self.arrays)


def cmd_reference(args: argparse.Namespace) -> int:
    """Write what d2l's own TimeMachine makes of the corpus, in tests/data/d2l_timemachine.json's format."""
    d2l = import_d2l()
    path = Path(args.data)
    raw = read_corpus(path)
    data = make_data_module(d2l, path)(batch_size=BATCH_SIZE, num_steps=NUM_STEPS)  # d2l's own windowing
    text = data._preprocess(raw)
    corpus, vocab = data.build(raw)
    X, Y = data.X.tolist(), data.Y.tolist()

    def window(i: int) -> list[int]:  # __init__ keeps X = w[:, :-1] and Y = w[:, 1:] of the windows w
        assert X[i][1:] == Y[i][:-1]
        return X[i] + Y[i][-1:]

    needed = NUM_TRAIN + NUM_VAL
    if len(X) < needed:
        raise ToolError(f"{path} gives {len(X)} windows of {NUM_STEPS + 1}, fewer than d2l's {needed}; "
                        "pass --data FILE with The Time Machine's text")
    sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
    ref = {
        "source": f"tools/d2l_baseline.py reference: d2l=={D2L_VERSION} d2l/jax.py TimeMachine._preprocess/"
                  f"_tokenize, Vocab and TimeMachine.__init__'s windows, on timemachine.txt (sha1 {sha1})",
        "preprocessed_chars": len(text),
        "preprocessed_sha1": hashlib.sha1(text.encode()).hexdigest(),
        "preprocessed_head": text[:60],
        "vocab_size": len(vocab),
        "idx_to_token": list(vocab.idx_to_token),
        "corpus_len": len(corpus),
        "corpus_head": corpus[:40],
        "num_steps": NUM_STEPS,
        "window_0": window(0),
        "window_10000": window(NUM_TRAIN),
        "last_val_window_index": needed - 1,
        "windows_needed": needed,
        "notes": [
            'preprocess: re.sub("[^A-Za-z]+", " ", text).lower(); tokens are characters',
            'idx_to_token is sorted(set(["<unk>"] + tokens)): alphabetical, not by frequency; '
            "token_freqs is sorted by frequency",
            "windows: corpus[i:i+num_steps+1] for i in range(len(corpus)-num_steps); X=w[:, :-1], Y=w[:, 1:]; "
            f"train = first num_train ({NUM_TRAIN}), val = next num_val ({NUM_VAL})",
        ],
    }
    out = Path(args.out)
    try:
        out.write_text(json.dumps(ref, indent=1))
    except OSError as e:
        raise ToolError(f"cannot write {out} ({e.strerror}); pass --out FILE in a writable directory") from None
    print(out, flush=True)
    return 0


def concise_rnn_class(nn: Any, jax: Any) -> type:
    """The concise chapter's tanh RNN: nn.scan over nn.SimpleCell, the pattern of d2l's own GRU class."""

    class RNN(nn.Module):
        num_hiddens: int

        @nn.compact
        def __call__(self, inputs, H=None, training=False):  # inputs: (num_steps, batch, vocab)
            if H is None:
                H = nn.SimpleCell(features=self.num_hiddens).initialize_carry(
                    jax.random.PRNGKey(0), (inputs.shape[1], self.num_hiddens))
            scan = nn.scan(nn.SimpleCell, variable_broadcast="params", in_axes=0, out_axes=0,
                           split_rngs={"params": False})
            H, outputs = scan(features=self.num_hiddens)(H, inputs)
            return outputs, H

    return RNN


def predict(d2l: types.ModuleType, model: Any, prefix: str, num_preds: int, vocab: Any, params: Any) -> str:
    """d2l's RNNLMScratch.predict, the argmax reshaped to () instead of (1,) before int()."""
    state, outputs = None, [vocab[prefix[0]]]
    for i in range(len(prefix) + num_preds - 1):
        X = d2l.tensor([[outputs[-1]]])
        embs = model.one_hot(X)
        rnn_outputs, state = model.rnn.apply({"params": params["rnn"]}, embs, state)
        if i < len(prefix) - 1:  # warm-up period
            outputs.append(vocab[prefix[i + 1]])
        else:  # predict num_preds steps
            Y = model.apply({"params": params}, rnn_outputs, method=model.output_layer)
            outputs.append(int(d2l.reshape(d2l.argmax(Y, axis=2), ())))
    return "".join([vocab.idx_to_token[i] for i in outputs])


def cmd_train(args: argparse.Namespace) -> int:
    """Train d2l's chapter model at the seed config with d2l's Trainer; print one JSON line."""
    d2l = import_d2l()
    import jax
    import numpy as np
    import optax
    from flax import linen as nn

    data = make_data_module(d2l, Path(args.data))(batch_size=BATCH_SIZE, num_steps=NUM_STEPS)
    V = len(data.vocab)
    base = d2l.RNNLMScratch if args.model == "scratch" else d2l.RNNLM

    class Model(base):
        def configure_optimizers(self):  # d2l: optax.sgd(lr); clipping added, see the module docstring
            return optax.chain(optax.clip_by_global_norm(self.trainer.gradient_clip_val), optax.sgd(self.lr))

    class TimedTrainer(d2l.Trainer):
        def fit_epoch(self) -> None:
            t = time.perf_counter()
            super().fit_epoch()
            jax.block_until_ready(self.state.params)
            self.epoch_times.append(time.perf_counter() - t)

    if args.model == "scratch":
        rnn = d2l.RNNScratch(num_inputs=V, num_hiddens=HIDDEN)
    else:
        rnn = concise_rnn_class(nn, jax)(num_hiddens=HIDDEN)
    model = Model(rnn, vocab_size=V, lr=LR)
    model.board.display = False  # record points, draw nothing
    trainer = TimedTrainer(max_epochs=args.epochs, gradient_clip_val=CLIP)
    trainer.epoch_times = []
    log(f"training d2l's {args.model} RNN, {args.epochs} epochs on {jax.default_backend()}")
    t0 = time.perf_counter()
    trainer.fit(model, data, key=jax.random.PRNGKey(0))
    total = time.perf_counter() - t0
    times = trainer.epoch_times
    params = trainer.state.params
    result = {
        "impl": f"d2l-jax-{args.model}",
        "d2l": D2L_VERSION,
        "backend": jax.default_backend(),
        "epochs": args.epochs,
        "setup_s": round(t0 - START, 3),
        "total_s": round(total, 3),
        "first_epoch_s": round(times[0], 3),
        "median_epoch_s": round(float(np.median(times[1:] or times)), 4),
        "val_ppl": round(float(model.board.data["val_ppl"][-1].y), 3),
        "sample": predict(d2l, model, "time traveller", 20, data.vocab, params),
    }
    print(json.dumps(result), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="tools/d2l_baseline.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    ref = sub.add_parser("reference", help="write d2l's preprocessing, vocabulary and windows as JSON")
    ref.add_argument("--data", default=str(DEFAULT_DATA), help="timemachine.txt (default: %(default)s)")
    ref.add_argument("--out", default=str(DEFAULT_REF), help="JSON file to write (default: %(default)s)")
    tr = sub.add_parser("train", help="train d2l's chapter model at the seed config; print one JSON line")
    tr.add_argument("model", choices=["scratch", "concise"], help="d2l 9.5 (scratch) or 9.6 (concise)")
    tr.add_argument("--data", default=str(DEFAULT_DATA), help="timemachine.txt (default: %(default)s)")
    tr.add_argument("--epochs", type=positive_int, default=EPOCHS, help="epochs (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if not Path(args.data).is_file():
            raise ToolError(f"data file {args.data} does not exist; pass --data FILE with The Time Machine's text")
        return cmd_reference(args) if args.command == "reference" else cmd_train(args)

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
