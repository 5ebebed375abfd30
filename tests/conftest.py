"""Test setup: Triton runs through its interpreter unless a CUDA GPU is present.

TRITON_INTERPRET must be set before triton is imported, so this happens at conftest import.
"""
import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

torch.set_num_threads(1)

# The device Triton runs on in this session: real CUDA, or CPU through the interpreter.
TRITON_DEVICE = "cuda" if HAS_CUDA else "cpu"


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


def first_mismatches(got: torch.Tensor, want: torch.Tensor, n: int = 5) -> str:
    """A readable report of the first n positions where got != want."""
    got, want = got.detach().cpu().reshape(-1), want.detach().cpu().reshape(-1)
    if got.shape != want.shape:
        return f"shapes differ: {tuple(got.shape)} vs {tuple(want.shape)}"
    bad = (got != want).nonzero().flatten()[:n].tolist()
    rows = [f"  [{i}] got {got[i].item()!r} want {want[i].item()!r}" for i in bad]
    return f"{int((got != want).sum())} mismatches; first:\n" + "\n".join(rows)


def assert_equal(got, want, what=""):
    if not torch.equal(got.detach().cpu(), want.detach().cpu()):
        raise AssertionError(f"{what}: {first_mismatches(got, want)}")
