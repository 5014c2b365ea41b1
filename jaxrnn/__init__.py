"""jaxrnn: character-level recurrent language models in pure JAX/Flax (d2l's RNN chapters, fast).

    import jaxrnn
    cfg = jaxrnn.Config(model="scratch")           # the seed config; every CLI flag is a field
    trained = jaxrnn.train(cfg, corpus=jaxrnn.corpus_for(cfg))
    print(trained.predict("time traveller", 50))
    trained.save("runs/seed")
    same = jaxrnn.load("runs/seed")

The names below are imported on first use, so that `import jaxrnn` (and `jaxrnn --version` or
`--help`) does not import JAX.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"  # the package's one version: pyproject.toml reads it from here

_WHERE = {  # public name -> the module that defines it
    "Loop": "cells", "PRESETS": "config", "Config": "config", "Corpus": "data", "Vocab": "data",
    "load_corpus": "data", "JaxrnnError": "errors", "ConciseRNNLM": "models", "ModelConfig": "models",
    "ScratchRNNLM": "models", "build_model": "models", "Trained": "run", "corpus_for": "run", "evaluate": "run",
    "load": "run", "train": "run",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'jaxrnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"jaxrnn.{_WHERE[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
