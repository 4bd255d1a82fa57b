"""Shared fixtures: tiny random targets for fast tests, the real SmolLM2 target for end-to-end ones."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels run under the interpreter on CPU; must be set before importing it
    os.environ.setdefault("TRITON_INTERPRET", "1")

from helpers import tiny_target  # noqa: E402

import dspark_hf  # noqa: E402


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct target (Hub cache, else the GGUF fallback) on CPU, float32."""
    return dspark_hf.load_target(device="cpu")


@pytest.fixture()
def tiny():
    return tiny_target()
