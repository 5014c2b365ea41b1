"""jaxrnn: character-level recurrent language models in pure JAX/Flax (d2l's RNN chapters, fast).

    import jaxrnn
    trained = jaxrnn.train(jaxrnn.Config(model="scratch"), out="runs/seed")
    print(trained.predict("time traveller", 50))
    same = jaxrnn.load("runs/seed")
"""

from jaxrnn.config import PRESETS, Config
from jaxrnn.data import Corpus, Vocab, load_corpus
from jaxrnn.errors import JaxrnnError
from jaxrnn.models import ConciseRNNLM, ScratchRNNLM, build_model
from jaxrnn.run import Trained, load, train

__all__ = [
    "PRESETS", "Config", "ConciseRNNLM", "Corpus", "JaxrnnError", "ScratchRNNLM", "Trained", "Vocab",
    "build_model", "load", "load_corpus", "train",
]
__version__ = "0.1.0"
