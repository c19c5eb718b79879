"""Procedural motion pairs and the motion-transfer score for training and evaluating SCAIL-2 Nano.

Its own package: nothing in the add-on, the worker or the engine imports it. See ``training/README.md``.
"""

from .pairs import (
    HELDOUT_SEEDS,
    HELDOUT_SETTINGS,
    TRAIN_SEEDS,
    MotionPairBatch,
    generate_pairs,
    heldout_pairs,
    palette_masks,
    seed_split,
)

__all__ = [
    "HELDOUT_SEEDS",
    "HELDOUT_SETTINGS",
    "TRAIN_SEEDS",
    "MotionPairBatch",
    "generate_pairs",
    "heldout_pairs",
    "palette_masks",
    "seed_split",
]
