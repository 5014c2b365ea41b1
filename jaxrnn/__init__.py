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
import importlib.util
from typing import Any

__version__ = "0.1.0"  # the package's one version: pyproject.toml reads it from here

_WHERE = {  # public name -> the module that defines it
    "Loop": "cells", "PRESETS": "config", "Config": "config", "Corpus": "data", "Vocab": "data",
    "load_corpus": "data", "JaxrnnError": "errors", "ConciseRNNLM": "models", "ModelConfig": "models",
    "ScratchRNNLM": "models", "build_model": "models", "Trained": "run", "corpus_for": "run", "evaluate": "run",
    "load": "run", "train": "run", "resume": "run", "Group": "run",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """A public name (`jaxrnn.train`), or a module of the package (`jaxrnn.config`), imported on first use."""
    if name in _WHERE:
        value = getattr(importlib.import_module(f"jaxrnn.{_WHERE[name]}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"jaxrnn.{name}") is not None:
        return importlib.import_module(f"jaxrnn.{name}")
    raise AttributeError(f"module 'jaxrnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
