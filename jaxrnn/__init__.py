"""jaxrnn: character-level recurrent language models in pure JAX/Flax (d2l's RNN chapters, fast).

    import jaxrnn
    cfg = jaxrnn.Config(model="scratch")           # the seed config; every CLI flag is a field
    trained = jaxrnn.train(cfg, corpus=jaxrnn.corpus_for(cfg))
    print(trained.predict("time traveller", 50))
    trained.save("runs/seed")
    same = jaxrnn.load("runs/seed")
"""

from jaxrnn.config import PRESETS, Config
from jaxrnn.data import Corpus, Vocab, load_corpus
from jaxrnn.errors import JaxrnnError
from jaxrnn.models import ConciseRNNLM, ScratchRNNLM, build_model
from jaxrnn.run import Trained, corpus_for, evaluate, load, train

__all__ = [
    "PRESETS", "Config", "ConciseRNNLM", "Corpus", "JaxrnnError", "ScratchRNNLM", "Trained", "Vocab",
    "build_model", "corpus_for", "evaluate", "load", "load_corpus", "train",
]
__version__ = "0.1.0"
