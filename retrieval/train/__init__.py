"""The trainer: metric-learning losses, PK sampling, BNNeck models, mutual learning, aligned parts;
`retrieve train` / `retrieve embed`.

Everything here needs torch (the ``train`` extra). Importing this package does NOT import
torch, so ``import retrieval`` and every other command work without it; call
``require_torch()`` at the start of a command to turn a missing torch into one clear line.
"""

from __future__ import annotations

from retrieval.errors import RetrieveError

INSTALL_HINT = "pip install 'retrieve[train]'"


def require_torch():
    """Import and return torch, or raise a user-facing error that says how to install it."""
    try:
        import torch
    except ImportError:
        raise RetrieveError(f"training and embedding need PyTorch, which is not installed; run: {INSTALL_HINT}") from None
    return torch
