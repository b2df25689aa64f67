"""The one marker for tests that need a CUDA GPU through torch (skipped elsewhere)."""

import pytest

# The product's one device probe: without the NVIDIA driver it answers without importing torch
# (2 s of every test worker's collection); with it, it asks torch.
from retrieval.indexes.distance import torch_cuda_available as cuda_available

_skip_without_cuda = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU with torch")


def requires_cuda(test):
    """Marks ``test`` `gpu` (``pytest -m gpu`` runs exactly these) and skips it without CUDA."""
    return pytest.mark.gpu(_skip_without_cuda(test))
