"""jaxrnn: character-level recurrent language models in pure JAX/Flax (d2l's RNN chapters, fast).

    import jaxrnn
    cfg = jaxrnn.Config(model="scratch")           # the seed config; every CLI flag is a field
    trained = jaxrnn.train(cfg, corpus=jaxrnn.corpus_for(cfg))
    print(trained.predict("time traveller", 50))
    trained.save("runs/seed")
    same = jaxrnn.load("runs/seed")
"""

__version__ = "0.1.0"  # the package's one version: pyproject.toml reads it from here

from jaxrnn.cells import Loop  # noqa: E402
from jaxrnn.config import PRESETS, Config  # noqa: E402
from jaxrnn.data import Corpus, Vocab, load_corpus  # noqa: E402
from jaxrnn.errors import JaxrnnError  # noqa: E402
from jaxrnn.models import ConciseRNNLM, ModelConfig, ScratchRNNLM, build_model  # noqa: E402
from jaxrnn.run import Trained, corpus_for, evaluate, load, train  # noqa: E402

__all__ = [
    "PRESETS", "Config", "ConciseRNNLM", "Corpus", "JaxrnnError", "Loop", "ModelConfig", "ScratchRNNLM",
    "Trained", "Vocab",
    "build_model", "corpus_for", "evaluate", "load", "load_corpus", "train",
]
