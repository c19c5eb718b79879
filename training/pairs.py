"""Motion pairs for training and evaluating SCAIL-2 Nano: the public interface of the generator.

    batch = generate_pairs(32, seed=step, mode="animation", characters=1, size=(128, 128), frames=33,
                           device="cuda", split="train")
    reference_mask = palette_masks(batch.reference_ids, mode=batch.mode, role="reference")

Item ``i`` of a batch is drawn from its own random stream, seeded by ``(seed, first_index + i)`` alone: the
same seed gives the same pairs whatever the batch size, device or resolution asked for (the scene is the same;
the pixels are rasterised at the requested size). Training uses seeds in :data:`TRAIN_SEEDS`, evaluation the
disjoint :data:`HELDOUT_SEEDS`, so a held-out pair is never produced in training (pass ``split=`` to have the
range checked).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from backend.palette import PALETTE, mask_background

from .motion import FPS
from .render import render
from .scene import PairScene, item_seed, sample_pair_scene

MODES = ("animation", "replacement")
TRAIN_SEEDS = range(0, 10**9)
HELDOUT_SEEDS = range(10**9, 2 * 10**9)
SPLITS = {"train": TRAIN_SEEDS, "heldout": HELDOUT_SEEDS}


@dataclass(frozen=True)
class HeldoutSetting:
    mode: str
    characters: int
    seed: int  # in HELDOUT_SEEDS; pair j of the set is item j of this seed


# The evaluation sets of the issue: animation, replacement and two characters (animation mode).
HELDOUT_SETTINGS: dict[str, HeldoutSetting] = {
    "animation": HeldoutSetting("animation", 1, HELDOUT_SEEDS.start),
    "replacement": HeldoutSetting("replacement", 1, HELDOUT_SEEDS.start + 1),
    "two_characters": HeldoutSetting("animation", 2, HELDOUT_SEEDS.start + 2),
}


@dataclass
class MotionPairBatch:
    """A batch of motion pairs. Images are float32 in [0, 1]; ids are 0 for background, k for identity k
    (1-based, palette colour k - 1, numbered left to right in the reference)."""

    mode: str  # "animation" | "replacement"
    reference: Tensor  # [B, 3, H, W]: character(s) A on the reference background
    reference_ids: Tensor  # [B, H, W] int64
    driving: Tensor  # [B, T, 3, H, W]: character(s) B performing M
    driving_ids: Tensor  # [B, T, H, W] int64
    target: Tensor  # [B, T, 3, H, W]: A performing M (animation: reference background; replacement: B's)
    target_ids: Tensor  # [B, T, H, W] int64
    target_background: Tensor  # [B, T, 3, H, W]: the target's frames without any character
    characters: int = 1
    fps: float = FPS
    seed: int = 0
    first_index: int = 0
    scenes: list[PairScene] = field(default_factory=list, repr=False)  # the plain-number scenes drawn

    @property
    def size(self) -> tuple[int, int]:
        return int(self.reference.shape[-2]), int(self.reference.shape[-1])

    @property
    def frames(self) -> int:
        return int(self.driving.shape[1])

    def __len__(self) -> int:
        return int(self.reference.shape[0])

    def to(self, device: str | torch.device) -> MotionPairBatch:
        tensors = {
            name: getattr(self, name).to(device)
            for name in ("reference", "reference_ids", "driving", "driving_ids", "target", "target_ids",
                         "target_background")
        }  # fmt: skip
        return MotionPairBatch(mode=self.mode, characters=self.characters, fps=self.fps, seed=self.seed,
                               first_index=self.first_index, scenes=self.scenes, **tensors)  # fmt: skip


def seed_split(seed: int) -> str:
    """``"train"`` or ``"heldout"``: the range ``seed`` belongs to."""
    for name, seeds in SPLITS.items():
        if seed in seeds:
            return name
    raise ValueError(f"seed {seed} is outside both the train {TRAIN_SEEDS} and held-out {HELDOUT_SEEDS} ranges")


def _check(batch: int, seed: int, mode: str, characters: int, size: tuple[int, int], frames: int,
           first_index: int, split: str | None) -> None:  # fmt: skip
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, not {batch!r}")
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, not {seed!r}")
    seed_split(int(seed))
    if split is not None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, not {split!r}")
        if int(seed) not in SPLITS[split]:
            raise ValueError(f"seed {seed} is not a {split} seed: {split} seeds are {SPLITS[split]}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if characters not in (1, 2):
        raise ValueError(f"characters must be 1 or 2, not {characters!r}")
    if len(size) != 2 or min(size) < 16:
        raise ValueError(f"size must be (height, width) with sides >= 16, not {size!r}")
    if not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be a positive int, not {frames!r}")
    if first_index < 0:
        raise ValueError(f"first_index must be >= 0, not {first_index}")


def generate_pairs(batch: int, *, seed: int, mode: str = "animation", characters: int = 1,
                   size: tuple[int, int] = (128, 128), frames: int = 33, device: str | torch.device = "cpu",
                   first_index: int = 0, split: str | None = None) -> MotionPairBatch:  # fmt: skip
    """``batch`` motion pairs (items ``first_index`` .. ``first_index + batch - 1`` of ``seed``).

    The scenes are sampled on the CPU (numpy, a few milliseconds per pair) and rasterised on ``device``.
    ``split`` ("train" or "heldout") makes the call fail unless ``seed`` lies in that split's range.
    """
    _check(batch, seed, mode, characters, size, frames, first_index, split)
    height, width = int(size[0]), int(size[1])
    scenes = [
        sample_pair_scene(np.random.default_rng(item_seed(int(seed), first_index + i)), mode=mode,
                          characters=characters, frames=frames, width=width, height=height)
        for i in range(batch)
    ]  # fmt: skip

    def draw(role: str) -> tuple[Tensor, Tensor, Tensor]:
        draws = [getattr(scene, role) for scene in scenes]
        parts = np.stack([d.part_features(scene.light) for d, scene in zip(draws, scenes, strict=True)])
        backgrounds = np.stack([d.background_features() for d in draws])
        steps = parts.shape[1]
        parts_t = torch.from_numpy(parts.reshape(batch * steps, *parts.shape[2:])).to(device, torch.float32)
        background_t = torch.from_numpy(backgrounds.reshape(batch * steps, -1)).to(device, torch.float32)
        image, ids, bare = render(parts_t, background_t, height, width)
        return (
            image.view(batch, steps, 3, height, width),
            ids.view(batch, steps, height, width),
            bare.view(batch, steps, 3, height, width),
        )

    reference, reference_ids, _ = draw("reference")
    driving, driving_ids, _ = draw("driving")
    target, target_ids, target_background = draw("target")
    return MotionPairBatch(
        mode=mode,
        reference=reference[:, 0],
        reference_ids=reference_ids[:, 0],
        driving=driving,
        driving_ids=driving_ids,
        target=target,
        target_ids=target_ids,
        target_background=target_background,
        characters=characters,
        seed=int(seed),
        first_index=first_index,
        scenes=scenes,
    )


def heldout_pairs(setting: str, count: int, *, first_index: int = 0, size: tuple[int, int] = (128, 128),
                  frames: int = 33, device: str | torch.device = "cpu") -> MotionPairBatch:  # fmt: skip
    """Pairs ``first_index`` .. of one of the issue's held-out evaluation sets (:data:`HELDOUT_SETTINGS`)."""
    if setting not in HELDOUT_SETTINGS:
        raise ValueError(f"setting must be one of {sorted(HELDOUT_SETTINGS)}, not {setting!r}")
    spec = HELDOUT_SETTINGS[setting]
    return generate_pairs(count, seed=spec.seed, mode=spec.mode, characters=spec.characters, size=size,
                          frames=frames, device=device, first_index=first_index, split="heldout")  # fmt: skip


def palette_masks(ids: Tensor, *, mode: str, role: str) -> Tensor:
    """Palette masks with SCAIL-2's polarity: ids [..., H, W] -> RGB float [..., 3, H, W] in {0, 1}.

    Identity k is ``PALETTE[(k - 1) % 6]``; the background is white or black by mode and role
    (animation: reference on white, driving on black; replacement: the other way round).
    """
    background = mask_background(mode, role)  # validates mode and role
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"ids must be an integer tensor, not {ids.dtype}")
    colours = torch.tensor((background, *PALETTE), dtype=torch.float32, device=ids.device) / 255.0
    index = torch.where(ids > 0, (ids.long() - 1) % len(PALETTE) + 1, torch.zeros_like(ids, dtype=torch.long))
    return colours[index].movedim(-1, -3)
