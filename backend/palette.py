"""The SCAIL-2 identity palette and mask polarity: identity i is drawn in ``PALETTE[i % 6]``.

Standard library only: the engine, the SAM3 masks and the Blender add-on (which ships this file) share it.

The model was trained on these exact colours; a single subject is blue. Backgrounds depend on the mode and on
whether the mask belongs to the reference or to the driving clip (SCAIL-2 "Mask Semantics").
"""

from __future__ import annotations

PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 255),  # blue
    (255, 0, 0),  # red
    (0, 255, 0),  # green
    (255, 0, 255),  # magenta
    (0, 255, 255),  # cyan
    (255, 255, 0),  # yellow
)
PALETTE_NAMES = ("blue", "red", "green", "magenta", "cyan", "yellow")
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)


def identity_colour(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def mask_background(mode: str, role: str) -> tuple[int, int, int]:
    """Background colour of a mask.

    mode: ``animation`` or ``replacement``; role: ``reference`` (also extra references) or ``driving``.
    Animation: reference colour on white, driving colour on black. Replacement: the other way round.
    """
    if mode not in {"animation", "replacement"}:
        raise ValueError(f"mode must be 'animation' or 'replacement', not {mode!r}")
    if role not in {"reference", "driving"}:
        raise ValueError(f"role must be 'reference' or 'driving', not {role!r}")
    white_background = (mode == "animation") == (role == "reference")
    return WHITE if white_background else BLACK
