"""Fixtures of the generator and score tests: small batches on the CPU, one torch thread.

Tiny tensors on a shared two-core machine run much faster on one thread than with two that wait for each
other; the previous setting is restored afterwards, so the rest of the suite is unaffected.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from training import generate_pairs

SIZE = (64, 64)
FRAMES = 9


@contextlib.contextmanager
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def one_torch_thread():
    with one_thread():
        yield


def _batch(**options):
    with one_thread():
        return generate_pairs(3, size=SIZE, frames=FRAMES, **options)


@pytest.fixture(scope="session")
def animation_batch():
    return _batch(seed=11, mode="animation")


@pytest.fixture(scope="session")
def replacement_batch():
    return _batch(seed=12, mode="replacement")


@pytest.fixture(scope="session")
def two_character_batch():
    return _batch(seed=13, mode="animation", characters=2)
