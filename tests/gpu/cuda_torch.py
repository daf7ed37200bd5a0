"""cuda_torch.py - what the PyTorch timing scripts beside it share: tools/ on
the import path, and torch with a CUDA device or a message saying why the
script skips (it then exits 77, CTest's SKIPPED).

    torch = cuda_torch.load("torch_bench")
    if torch is None: return 77
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))


def load(program):
    """The torch module when it imports and sees a CUDA device, else None."""
    try:
        import torch
    except ImportError as error:
        print(f"{program}: {error}: skipped", file=sys.stderr)
        return None
    if not torch.cuda.is_available():
        print(f"{program}: no CUDA device: skipped", file=sys.stderr)
        return None
    return torch


def load_for(program, device):
    """load(program) for device "cuda"; for "cpu", torch whenever it imports."""
    if device == "cuda":
        return load(program)
    try:
        import torch
    except ImportError as error:
        print(f"{program}: {error}: skipped", file=sys.stderr)
        return None
    return torch
