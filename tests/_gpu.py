"""The one marker for tests that need a CUDA GPU through torch (skipped elsewhere)."""

import os

import pytest

NVIDIA_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0")


def cuda_available() -> bool:
    # Without the NVIDIA driver there is no CUDA GPU: answer without importing torch (2 s of
    # every test worker's collection); with it, ask torch.
    if not any(os.path.exists(path) for path in NVIDIA_DRIVER_FILES):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


requires_cuda = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU with torch")
