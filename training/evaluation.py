"""The motion-transfer score: does a generated clip show the reference character moving like the driving one?

Per pair (``score_clip``; ``score_frames`` takes the ground truth as plain tensors or arrays instead):

* **silhouette IoU**, per frame: the generated character is every pixel that differs from the target's own
  background (``MotionPairBatch.target_background``) by more than ``threshold`` in some RGB channel; it is
  compared with the target's exact mask (all identities). Pixels on the mask's one-pixel boundary band
  (dilation minus erosion, 3x3) are left out: anti-aliased edges belong to neither side. Frames average.
* **colour distance**: CIE76 Delta E between the mean Lab colour of the generated pixels inside the target's
  mask (interior) and the mean Lab colour of the reference character; per identity, then averaged.
* **per-identity IoU** (two characters, where the reference characters' colours tell them apart): each
  generated foreground pixel goes to the identity whose reference colours are nearest; IoU per identity,
  pooled over the clip's frames.

``summarize`` averages scores over pairs. ``evaluate`` runs a generator callable over a batch; the baselines of
the issue are callables too (``reference_repeated``, ``driving_clip``; ``pipeline_generator`` wraps a
``Scail2Pipeline``, e.g. the untrained checkpoint). ``python -m training.evaluation`` prints the baselines on the
held-out sets.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .pairs import HELDOUT_SETTINGS, MotionPairBatch, heldout_pairs

DEFAULT_THRESHOLD = 0.1  # RGB max-channel difference in [0, 1]; characters contrast by >= 0.25 (scene.py)
IDENTITY_SELF_ACCURACY = 0.95  # reference pixels the colour classifier must get right for per-identity IoU
COLOUR_QUANT = 32  # colour classification works on 32 levels per channel (then on unique colours only)

Generator = Callable[[MotionPairBatch, int], "Tensor | np.ndarray"]


# --------------------------------------------------------------------------------------------- helpers


def as_frames(clip: Tensor | np.ndarray) -> Tensor:
    """[T, 3, H, W] float in [0, 1] or [T, H, W, 3] uint8 (torch or numpy) -> [T, 3, H, W] float32 on CPU."""
    tensor = torch.as_tensor(clip).detach().cpu()
    if tensor.ndim != 4:
        raise ValueError(f"expected a clip of 4 dimensions ([T, 3, H, W] or [T, H, W, 3]), got {tuple(tensor.shape)}")
    if tensor.dtype == torch.uint8:
        if tensor.shape[-1] != 3:
            raise ValueError(f"uint8 clips are [T, H, W, 3], got {tuple(tensor.shape)}")
        return tensor.permute(0, 3, 1, 2).float() / 255.0
    if not tensor.is_floating_point() or tensor.shape[1] != 3:
        raise ValueError(f"float clips are [T, 3, H, W] in [0, 1], got {tuple(tensor.shape)} {tensor.dtype}")
    return tensor.float().clamp(0.0, 1.0)


def boundary_band(mask: Tensor) -> Tensor:
    """Pixels within one pixel (3x3) of a mask edge, inside or outside. mask [..., H, W] bool."""
    shape = mask.shape
    flat = mask.reshape(-1, 1, *shape[-2:]).float()
    dilated = F.max_pool2d(flat, 3, stride=1, padding=1) > 0
    eroded = -F.max_pool2d(-flat, 3, stride=1, padding=1) > 0
    return (dilated & ~eroded).reshape(shape)


def srgb_to_lab(rgb: Tensor) -> Tensor:
    """[..., 3] sRGB in [0, 1] -> CIE Lab (D65)."""
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    matrix = torch.tensor(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
        dtype=rgb.dtype,
    )
    xyz = linear @ matrix.T / torch.tensor([0.95047, 1.0, 1.08883], dtype=rgb.dtype)
    f = torch.where(xyz > (6 / 29) ** 3, xyz.clamp_min(1e-12) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def _iou(predicted: Tensor, truth: Tensor, valid: Tensor, dims: tuple[int, ...] = (-2, -1)) -> Tensor:
    """IoU over ``valid`` pixels, summed over ``dims`` (per frame by default); empty against empty scores 1."""
    inter = (predicted & truth & valid).sum(dims).float()
    union = ((predicted | truth) & valid).sum(dims).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def _quantised(colours: Tensor) -> Tensor:
    return (colours * (COLOUR_QUANT - 1)).round().long()


def _nearest_identity(colours: Tensor, palettes: list[Tensor]) -> Tensor:
    """For each colour [P, 3], the index of the palette (a set of colours) holding the nearest colour."""
    codes = _quantised(colours)
    keys = (codes[:, 0] * COLOUR_QUANT + codes[:, 1]) * COLOUR_QUANT + codes[:, 2]
    unique, inverse = torch.unique(keys, return_inverse=True)
    unique_rgb = torch.stack([unique // COLOUR_QUANT**2, unique // COLOUR_QUANT % COLOUR_QUANT, unique % COLOUR_QUANT], -1)
    distances = torch.stack([torch.cdist(unique_rgb.float(), p.float()).min(dim=1).values for p in palettes], -1)
    return distances.argmin(-1)[inverse]


# ------------------------------------------------------------------------------------------------ score


def score_clip(generated: Tensor | np.ndarray, batch: MotionPairBatch, index: int, *,
               threshold: float = DEFAULT_THRESHOLD) -> dict:  # fmt: skip
    """Score one generated clip against pair ``index`` of ``batch``. ``generated`` [T, 3, H, W] float in
    [0, 1] or [T, H, W, 3] uint8, with the pair's frame count and size."""
    if not 0 <= index < len(batch):
        raise IndexError(f"pair index {index} is outside the batch of {len(batch)}")
    return score_frames(
        generated,
        target_background=batch.target_background[index],
        target_ids=batch.target_ids[index],
        reference=batch.reference[index],
        reference_ids=batch.reference_ids[index],
        threshold=threshold,
    )


def score_frames(generated: Tensor | np.ndarray, *, target_background: Tensor | np.ndarray,
                 target_ids: Tensor | np.ndarray, reference: Tensor | np.ndarray,
                 reference_ids: Tensor | np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict:  # fmt: skip
    """The score from explicit ground truth, for targets made elsewhere (e.g. rendered in Blender).

    ``target_background`` like ``generated`` ([T, 3, H, W] float or [T, H, W, 3] uint8); ``target_ids``
    [T, H, W] and ``reference_ids`` [H, W] integers (0 background, k identity k); ``reference`` [3, H, W]
    float or [H, W, 3] uint8.
    """
    frames = as_frames(generated)
    background = as_frames(target_background)
    reference = as_frames(torch.as_tensor(reference)[None])[0]
    ids = torch.as_tensor(target_ids).detach().cpu().long()
    reference_ids = torch.as_tensor(reference_ids).detach().cpu().long()
    height, width = reference.shape[-2:]
    expected = (ids.shape[0], 3, height, width)
    if tuple(frames.shape) != expected:
        raise ValueError(f"generated clip is {tuple(frames.shape)} but the target needs {expected} ([T, 3, H, W])")
    if tuple(background.shape) != expected or tuple(reference_ids.shape) != (height, width):
        raise ValueError(
            f"ground truth shapes disagree: target_background {tuple(background.shape)}, target_ids "
            f"{tuple(ids.shape)}, reference {tuple(reference.shape)}, reference_ids {tuple(reference_ids.shape)}"
        )

    foreground = (frames - background).abs().amax(dim=1) > threshold  # [T, H, W]
    mask = ids > 0
    iou_frames = _iou(foreground, mask, ~boundary_band(mask))

    identities = [k for k in reference_ids.unique().tolist() if k > 0]
    reference_interior = ~boundary_band(reference_ids > 0)
    target_interior = ~boundary_band(mask)
    pixels = frames.permute(0, 2, 3, 1)  # [T, H, W, 3]
    reference_pixels = reference.permute(1, 2, 0)
    colour_distances = []
    palettes = []
    for k in identities:
        own = (reference_ids == k) & reference_interior
        if not own.any():
            own = reference_ids == k
        reference_colours = reference_pixels[own]
        palettes.append(torch.unique(_quantised(reference_colours), dim=0))
        where = (ids == k) & target_interior
        if not where.any():  # identity k never (fully) in view in the target
            colour_distances.append(None)
            continue
        generated_lab = srgb_to_lab(pixels[where].double()).mean(0)
        reference_lab = srgb_to_lab(reference_colours.double()).mean(0)
        colour_distances.append(float((generated_lab - reference_lab).norm()))
    measured = [d for d in colour_distances if d is not None]

    result = {
        "iou": float(iou_frames.mean()),
        "iou_frames": [round(float(v), 4) for v in iou_frames],
        "colour_delta_e": float(np.mean(measured)) if measured else math.nan,
        "colour_delta_e_identity": colour_distances,  # per identity 1, 2, ... (None: not in view)
        "iou_identity": None,
    }
    if len(identities) > 1:
        # Only where the reference characters' own pixels are told apart by their colours.
        own_pixels = reference_pixels[reference_ids > 0]
        own_labels = reference_ids[reference_ids > 0]
        predicted = _nearest_identity(own_pixels, palettes)
        accuracy = float((torch.tensor(identities)[predicted] == own_labels).float().mean())
        result["identity_self_accuracy"] = accuracy
        if accuracy >= IDENTITY_SELF_ACCURACY:
            labels = torch.zeros_like(ids)
            if foreground.any():
                labels[foreground] = torch.tensor(identities)[_nearest_identity(pixels[foreground], palettes)]
            # Pooled over the clip: a character that is briefly almost hidden would swing a per-frame mean.
            # Both the identity's edges and every character's outline (half-covered pixels) are left out.
            outline = boundary_band(mask)
            result["iou_identity"] = [
                float(_iou(labels == k, ids == k, ~(boundary_band(ids == k) | outline), dims=(0, 1, 2)))
                for k in identities
            ]
    return result


def summarize(scores: list[dict]) -> dict:
    """Means over pairs: IoU (and its standard deviation), colour Delta E, per-identity IoU where defined."""
    if not scores:
        raise ValueError("no scores to summarize")
    iou = np.array([s["iou"] for s in scores])
    colour = np.array([s["colour_delta_e"] for s in scores])
    identity = [np.mean(s["iou_identity"]) for s in scores if s.get("iou_identity")]
    return {
        "pairs": len(scores),
        "iou": float(iou.mean()),
        "iou_std": float(iou.std()),
        "colour_delta_e": float(np.nanmean(colour)) if np.isfinite(colour).any() else math.nan,
        "iou_identity": float(np.mean(identity)) if identity else None,
        "identity_pairs": len(identity),
    }


# ------------------------------------------------------------------------------------ generators/baselines


def target_clip(batch: MotionPairBatch, index: int) -> Tensor:
    """The ground truth itself (a perfect prediction: IoU 1)."""
    return batch.target[index]


def reference_repeated(batch: MotionPairBatch, index: int) -> Tensor:
    """Baseline "no motion": the reference image in every frame."""
    return batch.reference[index].unsqueeze(0).expand(batch.frames, -1, -1, -1)


def driving_clip(batch: MotionPairBatch, index: int) -> Tensor:
    """Baseline "motion, wrong identity": the driving clip itself."""
    return batch.driving[index]


BASELINES: dict[str, Generator] = {"reference_repeated": reference_repeated, "driving": driving_clip}


def pipeline_generator(pipeline, **request_options) -> Generator:
    """A generator that runs ``pipeline`` (a ``backend.scail2.Scail2Pipeline``) on each pair through the public
    ``GenerationRequest``; ``request_options`` go to ``training.export.generation_request`` (prompt, sampling,
    segment_len, ...)."""
    from .export import generation_request

    def generate(batch: MotionPairBatch, index: int) -> np.ndarray:
        return pipeline.generate(generation_request(batch, index, **request_options)).frames

    return generate


def evaluate(generate: Generator, batch: MotionPairBatch, *, threshold: float = DEFAULT_THRESHOLD) -> list[dict]:
    """Scores of ``generate(batch, i)`` for every pair of ``batch``."""
    return [score_clip(generate(batch, i), batch, i, threshold=threshold) for i in range(len(batch))]


def evaluate_heldout(methods: dict[str, Generator], *, pairs: int = 50, settings: tuple[str, ...] | None = None,
                     size: tuple[int, int] = (128, 128), frames: int = 33, chunk: int = 10,
                     threshold: float = DEFAULT_THRESHOLD, progress: Callable[[str], None] | None = None,
                     ) -> dict[str, dict[str, dict]]:  # fmt: skip
    """``{setting: {method: summary}}`` over the first ``pairs`` pairs of each held-out set, generated
    ``chunk`` pairs at a time (pairs do not depend on the chunking)."""
    results: dict[str, dict[str, dict]] = {}
    for setting in settings or tuple(HELDOUT_SETTINGS):
        scores: dict[str, list[dict]] = {name: [] for name in methods}
        for start in range(0, pairs, chunk):
            batch = heldout_pairs(setting, min(chunk, pairs - start), first_index=start, size=size, frames=frames)
            for name, generate in methods.items():
                scores[name] += evaluate(generate, batch, threshold=threshold)
            if progress:
                progress(f"{setting}: {start + len(batch)}/{pairs} pairs")
        results[setting] = {name: summarize(values) for name, values in scores.items()}
    return results


def format_table(results: dict[str, dict[str, dict]]) -> str:
    lines = [f"{'setting':<16}{'method':<22}{'pairs':>6}{'IoU':>8}{'(std)':>8}{'dE':>8}{'IoU/id':>8}"]
    for setting, methods in results.items():
        for name, s in methods.items():
            identity = "-" if s["iou_identity"] is None else f"{s['iou_identity']:.3f}"
            lines.append(f"{setting:<16}{name:<22}{s['pairs']:>6}{s['iou']:>8.3f}{s['iou_std']:>8.3f}"
                         f"{s['colour_delta_e']:>8.1f}{identity:>8}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluation",
        description="Score the baselines (and optionally a checkpoint) on the held-out motion pairs.",
    )
    parser.add_argument("--pairs", type=int, default=50, help="pairs per setting")
    parser.add_argument("--settings", default=",".join(HELDOUT_SETTINGS), help="comma-separated held-out sets")
    parser.add_argument("--size", default="128x128", help="HEIGHTxWIDTH")
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--checkpoint", type=Path, help="also score this checkpoint through Scail2Pipeline")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps for --checkpoint")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.lower().split("x"))
    methods: dict[str, Generator] = {"target (perfect)": target_clip, **BASELINES}
    if args.checkpoint:
        from backend.scail2 import SamplingSettings, Scail2Pipeline

        pipe = Scail2Pipeline.from_pretrained(args.checkpoint, device="cpu", dtype=torch.float32)
        sampling = SamplingSettings.from_preset("fast", steps=args.steps, seed=0)
        methods[f"checkpoint:{args.checkpoint.name}"] = pipeline_generator(pipe, sampling=sampling)
    started = time.perf_counter()
    results = evaluate_heldout(
        methods,
        pairs=args.pairs,
        settings=tuple(args.settings.split(",")),
        size=(height, width),
        frames=args.frames,
        threshold=args.threshold,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(format_table(results))
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"pairs": args.pairs, "size": [height, width], "frames": args.frames,
                   "threshold": args.threshold, "results": results}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
