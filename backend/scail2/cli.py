"""``scail2-generate``: one SCAIL-2 generation from the command line.

    scail2-generate --checkpoint ~/models/SCAIL-2 --reference ref.png --driving dance.mp4 \\
        --prompt "a knight dancing in a courtyard" --mode animation --preset fast --size 512p --out out/

Masks, the choices the Blender add-on offers: ``--reference-mask alpha|auto|FILE`` and
``--driving-mask alpha|frame|auto|FILE`` (alpha: the input's alpha channel, the default; frame: the whole frame
is the subject; auto: SAM3 with ``--sam3 DIR``; FILE: a palette mask). ``--frames IN:OUT`` picks driving frames
(1-based, inclusive, like the add-on's In/Out). Driving sources: a video file, a zip or folder of PNG frames (give
``--fps``), or one image. Memory is estimated before decoding (``--max-decoded-gb``) and before generating
(``--max-memory-gb``, default: what the system has free). Errors a user can fix print one line and exit with
status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .conditioning.masks import mask_from_alpha
from .conditioning.media import VideoClip, clip_geometry, read_clip, read_image
from .conditioning.request import ExtraReference, GenerationRequest, resolve_size, validate_request
from .errors import GenerationCancelled, Scail2Error
from .schedulers.presets import PRESET_NAMES, STEP_CACHE_NAMES, SamplingSettings
from .schedulers.samplers import SAMPLERS

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scail2-generate",
        description="Animate a reference image with the motion of a driving video (SCAIL-2).",
    )
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="SCAIL-2 checkpoint folder (any supported layout)"
    )
    parser.add_argument(
        "--reference", required=True, type=Path, help="reference image (PNG/JPEG; RGBA alpha = mask)"
    )
    parser.add_argument(
        "--driving", required=True, type=Path, help="driving video, zip/folder of PNG frames, or image"
    )
    parser.add_argument(
        "--reference-mask", default="alpha", metavar="alpha|auto|FILE",
        help="what marks the subject in the reference: alpha (its alpha channel, e.g. a PNG with a transparent "
        "background; the default), auto (SAM3, with --sam3 DIR) or a palette mask image",
    )
    parser.add_argument(
        "--driving-mask", default="alpha", metavar="alpha|frame|auto|FILE",
        help="what marks the subject in the driving frames: alpha (the clip's alpha channel; the default), frame "
        "(the whole frame is the subject: close-ups, or footage without a mask), auto (SAM3, with --sam3 DIR) or a "
        "palette mask video / zip / folder of PNGs, one frame per driving frame",
    )
    parser.add_argument(
        "--frames", default=None, metavar="IN:OUT",
        help="driving frames to use, 1-based and inclusive like the add-on's In/Out (e.g. 1:81; IN: or :OUT "
        "leave an end open); applies to a driving mask file too",
    )
    parser.add_argument(
        "--max-decoded-gb", type=float, default=8.0,
        help="memory budget for the decoded driving clip and its mask, checked before decoding (default 8)",
    )
    parser.add_argument(
        "--max-memory-gb", type=float, default=None,
        help="memory the generation may use, checked before it starts (default: what the system has free)",
    )
    parser.add_argument(
        "--fps", type=float, help="frame rate of PNG-sequence driving inputs (video files: ignored)"
    )
    parser.add_argument(
        "--extra-reference",
        action="append",
        default=[],
        metavar="IMG[,MASK]",
        help="additional reference view with its palette mask (repeatable, beta)",
    )
    parser.add_argument("--prompt", default="", help="describes the final video")
    parser.add_argument("--negative-prompt", default="", help="used only when guidance > 1")
    parser.add_argument("--mode", choices=("animation", "replacement"), default="animation")
    parser.add_argument("--preset", choices=PRESET_NAMES, default="quality")
    parser.add_argument("--steps", type=int, help="override the preset's step count")
    parser.add_argument("--guidance", type=float, help="override the preset's CFG scale (<= 1 disables CFG)")
    parser.add_argument("--shift", type=float, help="override the preset's sigma shift")
    parser.add_argument("--sampler", choices=SAMPLERS, help="override the preset's sampler")
    parser.add_argument(
        "--step-cache",
        choices=STEP_CACHE_NAMES,
        default=None,
        help="skip DiT forwards of many-step sampling (default auto: TaylorSeer when a window has >= 20 steps, "
        "i.e. the quality preset; off below; docs/PERFORMANCE.md)",
    )
    parser.add_argument("--seed", type=int, help="random seed (default: random, printed at the end)")
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="NAME=STRENGTH",
        help="LoRA strength override, e.g. dpo=1.0 or relight=0.7 (repeatable; 0 disables a preset's LoRA)",
    )
    parser.add_argument("--size", default="512p", help="512p, 704p or WIDTHxHEIGHT (multiples of 32)")
    parser.add_argument("--segment-len", type=int, default=81, help="window length in frames (4k+1)")
    parser.add_argument("--segment-overlap", type=int, default=5, help="history frames per window (4k+1)")
    parser.add_argument(
        "--tail",
        choices=("pad", "drop"),
        default="pad",
        help="keep (pad) or drop (official) the frames after the last full window",
    )
    parser.add_argument(
        "--color-anchor", choices=("auto", "on", "off"), nargs="?", const="on", default="auto",
        help="match each later window's colours to the first window's, against colour drift on long clips; auto "
        "(the default): on when the clip needs more than one window",
    )
    parser.add_argument(
        "--noise-mode", choices=("cpu", "official"), default="cpu", help="where the noise is drawn"
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    from .accel.options import add_dtype_argument

    add_dtype_argument(parser)
    parser.add_argument(
        "--out", required=True, type=Path, help="output folder (PNG frames, result.mp4, result.json)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # --attention-backend, --fp8, --compile, --low-vram ... (defaults from the GPU's memory, docs/PERFORMANCE.md).
    from .accel.options import add_performance_arguments

    add_performance_arguments(parser)
    # "--reference-mask auto" / "--driving-mask auto" make the masks with SAM3 (backend.masks).
    from backend.masks.arguments import add_auto_mask_arguments

    add_auto_mask_arguments(parser)
    return parser


def _parse_loras(values: list[str]) -> dict[str, float] | None:
    if not values:
        return None
    loras = {}
    for value in values:
        name, sep, strength = value.partition("=")
        try:
            loras[name.strip()] = float(strength)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise Scail2Error(f"--lora {value!r}: expected NAME=STRENGTH, e.g. dpo=1.0")
    return loras


def parse_frames(text: str | None) -> tuple[int, int | None]:
    """``--frames IN:OUT`` (1-based, inclusive) -> [start, end) 0-based; (0, None) for the whole clip."""
    if text is None:
        return 0, None
    first, sep, last = text.partition(":")
    try:
        start = int(first) if first.strip() else 1
        end = int(last) if last.strip() else None
    except ValueError:
        sep = ""
    if not sep or start < 1 or (end is not None and end < start):
        raise Scail2Error(f"--frames {text!r}: use IN:OUT with 1 <= IN <= OUT, e.g. 1:81 (IN: or :OUT leave an end "
                          "open)")
    return start - 1, end


def _check_decoded_size(args: argparse.Namespace, end: int | None) -> None:
    """The driving clip (and a mask file) decoded up to ``end`` must fit ``--max-decoded-gb``: checked on headers
    alone, so a clip that would not fit fails at once instead of filling memory."""
    sources = {"driving": args.driving}
    if args.driving_mask not in (None, "alpha", "frame"):
        sources["driving_mask"] = args.driving_mask
    geometries = [clip_geometry(path, field, end) for field, path in sources.items()]
    need = sum(g.decoded_bytes for g in geometries)
    if need > args.max_decoded_gb * 2**30:
        first = geometries[0]
        raise Scail2Error(
            f"{first.frames} driving frames of {first.width}x{first.height} decode to {need / 2**30:.1f} GiB"
            f"{' with their mask' if len(geometries) > 1 else ''}, more than --max-decoded-gb "
            f"{args.max_decoded_gb:g}; pick fewer with --frames IN:OUT, use a smaller clip or raise --max-decoded-gb"
        )


def _reference_mask(args: argparse.Namespace, reference: np.ndarray) -> np.ndarray | None:
    """None for 'auto' (filled in later) and for 'alpha' (the engine reads the alpha); else the mask file."""
    choice = args.reference_mask
    if choice is None:
        return None
    if choice == "alpha":
        if reference.shape[-1] != 4:
            raise Scail2Error(
                f"--reference-mask alpha: {args.reference} has no alpha channel to mark the subject; give a PNG with "
                "a transparent background, a palette mask (--reference-mask FILE) or --reference-mask auto (SAM3, "
                "with --sam3 DIR)"
            )
        return None
    return read_image(choice, field="reference_mask")


def _driving_mask(args: argparse.Namespace, driving: VideoClip, start: int, end: int | None) -> VideoClip | None:
    """None for 'auto' and 'alpha' (as for the reference); the whole frame as the subject for 'frame'; else the
    mask file, cut to the same frames as the clip."""
    choice = args.driving_mask
    if choice is None:
        return None
    if choice == "alpha":
        if driving.frames.shape[-1] != 4:
            raise Scail2Error(
                f"--driving-mask alpha: {args.driving} has no alpha channel to mark the subject; give --driving-mask "
                "frame (the whole frame is the subject), a palette mask (--driving-mask FILE) or --driving-mask auto "
                "(SAM3, with --sam3 DIR)"
            )
        return None
    if choice == "frame":
        whole = np.full(driving.frames.shape[:3], 255, np.uint8)
        return VideoClip(mask_from_alpha(whole, args.mode, "driving"), driving.fps)
    # A mask sequence plays at the driving clip's rate: their frames correspond one to one.
    mask = read_clip(choice, field="driving_mask", fps=driving.fps, end=end)
    mask.frames = mask.frames[start:]
    return mask


def build_request(args: argparse.Namespace) -> GenerationRequest:
    """The generation request the command line describes (reads every input file)."""
    resolve_size(args.size, (1, 1))  # a malformed --size fails before any file is read
    sampling = SamplingSettings.from_preset(
        args.preset,
        steps=args.steps,
        guidance=args.guidance,
        shift=args.shift,
        sampler=args.sampler,
        seed=args.seed,
        noise_mode=args.noise_mode,
        step_cache=args.step_cache,
    )
    loras = _parse_loras(args.lora)
    if loras is not None:
        loras = {**sampling.loras, **loras}
    extras = []
    for index, spec in enumerate(args.extra_reference):
        image_path, _, mask_path = spec.partition(",")
        field = f"extra_references[{index}]"
        image = read_image(image_path, field=f"{field}.image")
        mask = read_image(mask_path, field=f"{field}.mask") if mask_path else None
        extras.append(ExtraReference(image, mask))
    reference = read_image(args.reference, field="reference")
    reference_mask = _reference_mask(args, reference)
    start, end = parse_frames(args.frames)
    _check_decoded_size(args, end)
    driving = read_clip(args.driving, field="driving", fps=args.fps, end=end)
    if start >= driving.num_frames:
        raise Scail2Error(f"--frames {args.frames}: {args.driving} has only {driving.num_frames} frames")
    driving.frames = driving.frames[start:]
    request = GenerationRequest(
        reference=reference,
        reference_mask=reference_mask,
        driving=driving,
        driving_mask=_driving_mask(args, driving, start, end),
        extra_references=extras,
        mode=args.mode,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        size=args.size,
        sampling=sampling,
        loras=loras,
        segment_len=args.segment_len,
        segment_overlap=args.segment_overlap,
        tail=args.tail,
    )
    return request


def _check_memory(args: argparse.Namespace, pipe, request: GenerationRequest, height: int, width: int,
                  windows: list) -> None:
    """The generation's memory against what is free (or ``--max-memory-gb``), before it starts."""
    from .pipelines.memory import GIB, check_generation_memory, estimate_generation_memory

    frames = request.driving.num_frames
    estimate = estimate_generation_memory(pipe, frames, height, width, windows, len(request.extra_references))
    limit = None if args.max_memory_gb is None else int(args.max_memory_gb * GIB)
    check_generation_memory(
        estimate, f"--size {width}x{height} with {frames} frames", limit,
        advice="use a smaller --size, fewer --frames or a shorter --segment-len"
        + (", or raise --max-memory-gb" if limit is not None else ""),
    )


def _prepare_performance(pipe, settings, request: GenerationRequest) -> dict:
    """Apply the performance settings once after loading; returns what they resolved to (kept in result.json).

    With ``--fp8`` the request's LoRAs are fused before the conversion and pinned: the fp8 layers keep no bf16
    weight to fuse into later, so the generation must (and does) run with exactly these strengths.
    """
    from .accel.options import performance_report, prepare_pipeline

    loras = request.effective_loras if settings.fp8_linear else None
    preset = request.sampling.preset if request.loras is None else None
    try:
        state = prepare_pipeline(pipe, settings, loras, preset)
    except RuntimeError as exc:  # fp8 or an attention backend this device cannot run
        raise Scail2Error(str(exc)) from exc
    return performance_report(pipe, state)


class _ProgressBar:
    """A tqdm bar over all denoising steps of all windows."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def __call__(self, event) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        total = event.num_windows * event.num_steps
        if self.bar is None:
            self.bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True)
        if event.phase in ("step", "window", "decode"):
            self.bar.set_description(f"window {event.window}/{event.num_windows}")
        if event.phase == "step":
            self.bar.n = (event.window - 1) * event.num_steps + event.step
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    bar = _ProgressBar(not args.no_progress)
    try:
        import torch

        from .parallel import parallelize_from_environment
        from .pipelines.output import write_frames_atomic
        from .pipelines.pipeline_scail2 import Scail2Pipeline

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        out = args.out.expanduser()
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
            raise Scail2Error(f"{out} is not empty; choose another --out or pass --overwrite")
        from backend.masks.arguments import AutoMaskHook

        auto_masks = AutoMaskHook.take(args)  # removes the 'auto' values so build_request reads only files
        request = auto_masks.apply(build_request(args))
        height, width = validate_request(request)  # fail on bad inputs before the (slow) model load
        windows = Scail2Pipeline.plan_windows(request.driving.num_frames, request)
        request.color_anchor = len(windows) > 1 if args.color_anchor == "auto" else args.color_anchor == "on"
        from .accel.options import resolve_dtype, settings_for, transformer_load_device

        settings = settings_for(device, args)
        pipe = Scail2Pipeline.from_pretrained(
            args.checkpoint, device=device, dtype=getattr(torch, resolve_dtype(args.dtype, device)),
            transformer_device=transformer_load_device(settings, device),
        )
        # Under torchrun the DiT's forwards are split across the launched processes (a no-op otherwise).
        parallelize_from_environment(pipe.transformer)
        performance = _prepare_performance(pipe, settings, request)
        _check_memory(args, pipe, request, height, width, windows)
        result = pipe.generate(request, progress=bar)
        bar.close()
        result.settings["performance"] = performance
        write_frames_atomic(result, out, overwrite=args.overwrite)
    except (KeyboardInterrupt, GenerationCancelled):
        bar.close()
        print("scail2-generate: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Scail2Error as exc:
        bar.close()
        print(f"scail2-generate: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(
        f"wrote {result.num_frames} frames at {result.fps:g} fps ({result.frames.shape[2]}x{result.frames.shape[1]}, "
        f"seed {result.seed}) to {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
