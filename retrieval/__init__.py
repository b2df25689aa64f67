"""retrieve: retrieval and evaluation engine for metric-learning embeddings.

Notebook API: ``from retrieval import Gallery, evaluate, connect``.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy so that `import retrieval` (and the CLI start-up) stays light.
    if name == "Gallery":
        from retrieval.gallery import Gallery

        return Gallery
    if name == "evaluate":
        from retrieval.api import evaluate

        return evaluate
    if name == "connect":
        from retrieval.catalogue import connect

        return connect
    raise AttributeError(name)
