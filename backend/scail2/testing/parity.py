"""Parity of this implementation against one golden fixture set: ``python -m backend.scail2.parity DIR``.

``DIR`` is laid out like ``tests/data/parity/<set>``. The set is recognised from its files (``dit``, ``t5``,
``clip``, ``vae``, ``masks``, ``segments``, ``scheduler``, ``pipeline``); everything else (shapes, seeds,
settings, tolerances of the fixture README) is derived from the files. One JSON line per case is printed:
``{"set", "case", "max_rel_err", "tol", "ok"}``; the exit status is 0 only if every case is ok.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..errors import Scail2Error

Record = dict[str, Any]

# The fixture README's recommended tolerances.
MASK_TOLERANCE = 1e-6
SIGMA_TOLERANCE = 1e-7
LATENT_TOLERANCE = 1e-5
VIDEO_ABS_TOLERANCE = 1e-3
TRACE_TOLERANCE = 1e-4


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max|actual - expected| / max(1, max|expected|)``; inf when the shapes differ."""
    if tuple(actual.shape) != tuple(expected.shape):
        return float("inf")
    if expected.numel() == 0:
        return 0.0
    actual, expected = actual.double(), expected.double()
    return float((actual - expected).abs().max() / max(1.0, float(expected.abs().max())))


def _record(set_name: str, case: str, error: float, tol: float) -> Record:
    return {"set": set_name, "case": case, "max_rel_err": error, "tol": tol, "ok": bool(error <= tol)}


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise Scail2Error(f"{path}: cannot read fixture JSON ({exc})") from exc


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:
        raise Scail2Error(f"{path}: cannot read fixture tensors ({exc})") from exc


# ------------------------------------------------------------------------------------------------- masks


def check_masks(set_dir: Path) -> list[Record]:
    """Colour-mask compression: the video and image conversions, the bilinear half, the 28-channel maps."""
    from ..conditioning.masks import (
        compress_mask_to_latent,
        compress_reference_mask,
        halve_bilinear,
        image_to_unit_range,
        video_to_unit_range,
    )

    name = set_dir.name
    records: list[Record] = []
    driving_path = set_dir / "driving.safetensors"
    if driving_path.is_file():
        d = _tensors(driving_path)
        if "source_uint8_thwc" in d:
            mask = video_to_unit_range(d["source_uint8_thwc"].permute(3, 0, 1, 2))
            records.append(
                _record(name, "driving_mask_from_uint8", relative_error(mask, d["mask"]), MASK_TOLERANCE)
            )
        if "latent_direct" in d:
            out = compress_mask_to_latent(d["mask"])
            records.append(
                _record(
                    name, "driving_latent_direct", relative_error(out, d["latent_direct"]), MASK_TOLERANCE
                )
            )
        if "mask_half" in d:
            half = halve_bilinear(d["mask"])
            records.append(
                _record(name, "driving_mask_half", relative_error(half, d["mask_half"]), MASK_TOLERANCE)
            )
        if "latent_half" in d:
            out = compress_mask_to_latent(halve_bilinear(d["mask"]))
            records.append(
                _record(name, "driving_latent_half", relative_error(out, d["latent_half"]), MASK_TOLERANCE)
            )
    reference_path = set_dir / "reference.safetensors"
    if reference_path.is_file():
        r = _tensors(reference_path)
        if "source_uint8_hwc" in r:
            mask = image_to_unit_range(r["source_uint8_hwc"].permute(2, 0, 1))
            records.append(
                _record(name, "reference_mask_from_uint8", relative_error(mask, r["mask"]), MASK_TOLERANCE)
            )
        for source, target in (("mask", "latent"), ("mask_resampled", "latent_resampled")):
            if source in r and target in r:
                out = compress_reference_mask(r[source])
                records.append(
                    _record(name, f"reference_{target}", relative_error(out, r[target]), MASK_TOLERANCE)
                )
    return records


# ---------------------------------------------------------------------------------------------- segments


def check_segments(set_dir: Path) -> list[Record]:
    """The official window builder, case by case: windows, decoded frames, output frames, dropped tail."""
    from ..conditioning.segments import official_windows, output_frame_count

    data = _json(set_dir / "segments.json")
    records = []
    for case in data.get("cases", []):
        label = f"T{case['T']}_len{case['segment_len']}_overlap{case['segment_overlap']}"
        try:
            windows = official_windows(case["T"], case["segment_len"], case["segment_overlap"])
            error_text = None
        except ValueError as exc:
            windows, error_text = [], str(exc)
        if case.get("error") is not None or error_text is not None:
            ok = (case.get("error") is None) == (error_text is None)
        else:
            ok = (
                [[w.start, w.end] for w in windows] == case["windows"]
                and [w.length for w in windows]
                == case.get("decoded_frames_per_window", [w.length for w in windows])
                and output_frame_count(windows) == case.get("output_frames", output_frame_count(windows))
                and case["T"] - windows[-1].end
                == case.get("dropped_tail_frames", case["T"] - windows[-1].end)
            )
        records.append(_record(set_dir.name, label, 0.0 if ok else 1.0, 0.0))
    return records


# --------------------------------------------------------------------------------------------- scheduler


def _scheduler_cases(set_dir: Path, tensors: dict[str, torch.Tensor]) -> list[tuple[str, int, float, str]]:
    """(solver, steps, shift, key prefix) of every solve in the set, from config.json or the tensor names."""
    config = _json(set_dir / "config.json") if (set_dir / "config.json").is_file() else {}
    cases = []
    for entry in config.get("schedules", []):
        cases.append((entry["solver"], int(entry["steps"]), float(entry["shift"]), entry["key_prefix"]))
    if cases:
        return cases
    for key in tensors:
        if key.endswith("_latents"):
            prefix = key[: -len("_latents")]
            solver, steps, shift = prefix.split("_")
            cases.append((solver, int(steps), float(shift.replace("p", ".")), prefix))
    return cases


def check_scheduler(set_dir: Path) -> list[Record]:
    """Timesteps (exact), sigmas and the solve x_0..x_N of every (solver, steps, shift) in the set."""
    from ..schedulers.samplers import build_sampler

    tensors = _tensors(set_dir / "schedules.safetensors")
    config = _json(set_dir / "config.json") if (set_dir / "config.json").is_file() else {}
    coefficients = config.get("model_output_coefficients", {"a": 0.3, "b": 0.01})
    a, b = float(coefficients["a"]), float(coefficients["b"])
    name = set_dir.name
    records = []
    for solver, steps, shift, prefix in _scheduler_cases(set_dir, tensors):
        sampler = build_sampler({"dpmpp": "dpm++"}.get(solver, solver), steps, shift)
        if f"{prefix}_timesteps" in tensors:
            expected = tensors[f"{prefix}_timesteps"]
            exact = expected.dtype == sampler.timesteps.dtype and torch.equal(sampler.timesteps, expected)
            records.append(_record(name, f"{prefix}_timesteps", 0.0 if exact else 1.0, 0.0))
        if f"{prefix}_sigmas" in tensors:
            error = relative_error(sampler.sigmas, tensors[f"{prefix}_sigmas"])
            records.append(_record(name, f"{prefix}_sigmas", error, SIGMA_TOLERANCE))
        expected_latents = tensors[f"{prefix}_latents"]
        x = tensors.get("x_init", expected_latents[0]).clone()
        latents = [x]
        for step in range(steps):
            velocity = a * x + b * step
            x = sampler.step(velocity, step, x)
            latents.append(x)
        error = relative_error(torch.stack(latents), expected_latents)
        records.append(_record(name, f"{prefix}_latents", error, LATENT_TOLERANCE))
    return records


# ---------------------------------------------------------------------------------------------- pipeline


def _pipeline_components(set_dir: Path, config: dict):
    """The four components built from the set's official state dicts and tiny constructor arguments."""
    from ..loaders.weights import open_state_dict
    from ..models.image_encoder import ClipImageEncoder, ClipVisionConfig
    from ..models.text_encoder import T5EncoderConfig, UMT5TextEncoder, build_umt5, convert_official_t5_keys
    from ..models.transformer_scail2 import config_from_official
    from ..models.vae import WanVAEConfig, WanVideoVAE
    from .parity_dit import load_dit

    components = config["components"]
    dit = components["dit"]
    dit_config = config_from_official(dit["constructor_args"], clip_dim=int(dit.get("clip_dim", 1280)))
    transformer = load_dit(set_dir / dit.get("file", "dit.safetensors"), dit_config)
    t5 = components["t5"]
    t5_config = T5EncoderConfig.from_official_args(t5["constructor_args"])
    t5_state = convert_official_t5_keys(open_state_dict(set_dir / t5.get("file", "t5.safetensors")))
    t5_model = build_umt5(t5_config.to_transformers(), t5_state, dtype=torch.float32, device="cpu")
    text_encoder = UMT5TextEncoder(
        t5_model, tokenizer=None, text_len=int(config.get("pipeline_config", {}).get("text_len", 512))
    )
    clip = components["clip"]
    image_encoder = ClipImageEncoder.from_official(
        set_dir / clip.get("file", "clip.safetensors"),
        ClipVisionConfig.from_official_args(clip["constructor_args"]),
        dtype=torch.float32,
    )
    vae = components["vae"]
    video_vae = WanVideoVAE.from_official(
        set_dir / vae.get("file", "vae.safetensors"),
        WanVAEConfig.from_official_args(vae["constructor_args"]),
        dtype=torch.float32,
    )
    return transformer, text_encoder, image_encoder, video_vae


# generate() arguments that are tensors: whether the run needs it, and the inputs.safetensors key that holds it when
# generate_args does not name one.
_TENSOR_ARGS = {
    "img": (True, "img"),
    "ref_mask_img": (True, "ref_mask_img"),
    "pose_video": (True, "pose_video"),
    "driving_mask_video": (True, "driving_mask_video"),
    "additional_ref_imgs": (False, "additional_ref_imgs"),
    "additional_ref_mask_imgs": (False, "additional_ref_mask_imgs"),
}


class _FixtureTensors:
    """The tensor files of a pipeline set, read on first use, and ``FILE:KEY`` names resolved against them."""

    def __init__(self, set_dir: Path):
        self.set_dir = set_dir
        self.files: dict[str, dict[str, torch.Tensor]] = {}

    def file(self, stem: str, where: str = "the set") -> dict[str, torch.Tensor]:
        if stem not in self.files:
            path = self.set_dir / f"{stem}.safetensors"
            if not path.is_file():
                raise Scail2Error(f"{self.set_dir / 'config.json'}: {where} names {stem}.safetensors, which the set "
                                  "does not have")
            self.files[stem] = _tensors(path)
        return self.files[stem]

    def get(self, reference: str, where: str) -> torch.Tensor:
        stem, _, key = reference.rpartition(":")
        tensors = self.file(stem or "inputs", where)
        if key not in tensors:
            raise Scail2Error(
                f"{self.set_dir / 'config.json'}: {where} names {reference!r}, but {stem or 'inputs'}.safetensors "
                f"has no tensor {key!r} (it has {sorted(tensors)})"
            )
        return tensors[key]


def _names_a_tensor(set_dir: Path, value: Any) -> bool:
    """Whether a generate_args value is a ``FILE:KEY`` name of this set (a prompt such as "style: x" is not)."""
    if isinstance(value, list):
        return any(_names_a_tensor(set_dir, item) for item in value)
    stem, colon, _key = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    return bool(colon and stem) and (set_dir / f"{stem}.safetensors").is_file()


def resolve_generate_inputs(set_dir: Path, args: dict[str, Any]) -> dict[str, Any]:
    """The tensors ``generate()`` received, found by the names ``config.json`` -> ``generate_args`` gives them.

    A value is ``"FILE:KEY"`` (a tensor of ``FILE.safetensors``; ``inputs:img`` is ``img`` in
    ``inputs.safetensors``), a list of such names (one tensor each, e.g. one per additional reference, which is also
    how a stacked tensor of several is returned), or null. An argument generate_args leaves out is read from its
    usual key when present. A name that points nowhere, or a tensor name on an argument this check cannot pass,
    raises naming it: nothing is silently left out.
    """
    tensors = _FixtureTensors(set_dir)
    resolved: dict[str, Any] = {}
    for name, (required, usual_key) in _TENSOR_ARGS.items():
        where = f"generate_args.{name}"
        value = args.get(name, f"inputs:{usual_key}" if usual_key in tensors.file("inputs") else None)
        if isinstance(value, list):
            value = [tensors.get(item, f"{where}[{index}]") for index, item in enumerate(value)]
        elif value is not None:
            value = tensors.get(value if ":" in value else f"inputs:{value}", where)
        if value is None and required:
            raise Scail2Error(f"{set_dir / 'config.json'}: {where} is missing and inputs.safetensors has no "
                              f"{usual_key!r}; the run needs it")
        if name.startswith("additional_"):
            value = [] if value is None else list(value)  # a list of names, or one stacked [N, 3, H, W] tensor
        resolved[name] = value
    unknown = [name for name, value in args.items() if name not in _TENSOR_ARGS and _names_a_tensor(set_dir, value)]
    if unknown:
        raise Scail2Error(f"{set_dir / 'config.json'}: generate_args {unknown} name input tensors this check does "
                          f"not pass to the pipeline (it passes {sorted(_TENSOR_ARGS)})")
    if len(resolved["additional_ref_imgs"]) != len(resolved["additional_ref_mask_imgs"]):
        raise Scail2Error(f"{set_dir / 'config.json'}: {len(resolved['additional_ref_imgs'])} additional reference "
                          f"images but {len(resolved['additional_ref_mask_imgs'])} masks")
    for name in ("prompt_ids", "negative_prompt_ids"):
        if name in tensors.file("inputs"):
            resolved[name] = tensors.file("inputs")[name]
    if "prompt_ids" not in resolved:
        raise Scail2Error(f"{set_dir / 'inputs.safetensors'}: no 'prompt_ids' (the token ids fed in place of the "
                          "tokenizer)")
    return resolved


def run_pipeline_set(set_dir: Path) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The official ``generate()`` of a pipeline set run by this implementation: the video and its trace."""
    from ..conditioning.segments import official_windows
    from ..pipelines.pipeline_scail2 import EncodedConditions, FrameSource, Scail2Pipeline
    from ..schedulers.presets import SamplingSettings

    config = _json(set_dir / "config.json")
    args = config["generate_args"]
    inputs = resolve_generate_inputs(set_dir, args)
    transformer, text_encoder, image_encoder, vae = _pipeline_components(set_dir, config)
    pipe = Scail2Pipeline(transformer, text_encoder, image_encoder, vae, device="cpu")

    guidance = float(args.get("guide_scale", 5.0))
    settings = SamplingSettings(
        sampler=args.get("sample_solver", "unipc"),
        steps=int(args.get("sampling_steps", 40)),
        guidance=guidance,
        shift=float(args.get("shift", 5.0)),
        seed=int(args["seed"]),
        noise_mode="official",
    )

    def encode_ids(ids: torch.Tensor) -> torch.Tensor:
        # The official tokenizer output: ids padded with 0 to text_len, attention mask 1 on the ids.
        padded = torch.zeros(text_encoder.text_len, dtype=torch.int64)
        padded[: ids.numel()] = ids
        mask = torch.zeros_like(padded)
        mask[: ids.numel()] = 1
        return text_encoder.encode_ids(padded, mask)[0][None]

    context = encode_ids(inputs["prompt_ids"])
    context_null = encode_ids(inputs["negative_prompt_ids"]) if "negative_prompt_ids" in inputs else None
    image = inputs["img"]
    clip_features = pipe.encode_image(image)
    ref_latent, ref_mask, extra_latents, extra_mask = pipe.encode_references(
        image, inputs["ref_mask_img"], inputs["additional_ref_imgs"], inputs["additional_ref_mask_imgs"]
    )
    conditions = EncodedConditions(
        context,
        context_null if guidance > 1.0 else None,
        clip_features,
        ref_latent,
        ref_mask,
        extra_latents,
        extra_mask,
    )
    pose_video = inputs["pose_video"]
    windows = official_windows(
        pose_video.shape[0], int(args.get("segment_len", 81)), int(args.get("segment_overlap", 5))
    )
    trace: dict[str, torch.Tensor] = {
        "context": context[0],
        "clip_context": clip_features,
        "ref_latent": ref_latent,
        "ref_mask_latent_28ch": ref_mask,
    }
    if context_null is not None:
        trace["context_null"] = context_null[0]
    if extra_latents is not None:
        trace["additional_ref_latents"] = extra_latents
        trace["additional_ref_masks"] = extra_mask
    pipe.denoise_windows(
        conditions,
        FrameSource(pose_video, inputs["driving_mask_video"]),
        windows,
        settings,
        replace=bool(args.get("replace_flag", False)),
        height=int(image.shape[1]),
        width=int(image.shape[2]),
        trace=trace,
    )
    video = torch.cat([trace[f"w{w.index}_video"][:, w.history :] for w in windows], dim=1)
    return video, trace


def check_pipeline(set_dir: Path) -> list[Record]:
    """The whole official ``generate()``: video max abs error, and every trace tensor both sides produce."""
    expected_video = _tensors(set_dir / "output.safetensors")["video"]
    expected_trace = (
        _tensors(set_dir / "trace.safetensors") if (set_dir / "trace.safetensors").is_file() else {}
    )
    video, trace = run_pipeline_set(set_dir)
    name = set_dir.name
    video_error = float("inf")
    if video.shape == expected_video.shape:
        video_error = float((video.double() - expected_video.double()).abs().max())
    records = [_record(name, "video_max_abs", video_error, VIDEO_ABS_TOLERANCE)]
    for key in sorted(expected_trace):
        if key not in trace:
            continue
        expected = expected_trace[key]
        if expected.dtype == torch.int64:
            ok = torch.equal(trace[key].to(torch.int64), expected)
            records.append(_record(name, f"trace_{key}", 0.0 if ok else 1.0, 0.0))
        else:
            records.append(
                _record(name, f"trace_{key}", relative_error(trace[key], expected), TRACE_TOLERANCE)
            )
    return records


# ------------------------------------------------------------------------------------------------ dispatch


def _encoder_check(function_name: str) -> Callable[[Path], list[Record]]:
    def run(set_dir: Path) -> list[Record]:
        from . import parity_encoders

        return getattr(parity_encoders, function_name)(set_dir)

    return run


def _dit_check(set_dir: Path) -> list[Record]:
    from .parity_dit import check_dit_fixture

    return check_dit_fixture(set_dir)


def detect_set_kind(set_dir: Path) -> str:
    """Which fixture set ``set_dir`` holds, judged from its files (the folder name is only a tie-breaker)."""
    files = {p.name for p in set_dir.iterdir()} if set_dir.is_dir() else set()
    if not files:
        raise Scail2Error(f"{set_dir}: not a folder with fixture files")
    if {"inputs.safetensors", "output.safetensors"} <= files:
        return "pipeline"
    if "segments.json" in files:
        return "segments"
    if "schedules.safetensors" in files:
        return "scheduler"
    if {"driving.safetensors", "reference.safetensors"} & files and "state_dict.safetensors" not in files:
        return "masks"
    if "state_dict.safetensors" in files and any(f.startswith("case_") for f in files):
        return "dit"
    if "state_dict.safetensors" in files and "config.json" in files:
        config = _json(set_dir / "config.json")
        text = json.dumps(config.get("constructor_args", config)).lower()
        producer = str(config.get("producer", "")).lower()
        keys = load_file_keys(set_dir / "state_dict.safetensors")
        if any(k.startswith("visual.") for k in keys):
            return "clip"
        if any(k.startswith(("encoder.", "decoder.")) for k in keys):
            return "vae"
        if "token_embedding.weight" in keys or "t5" in producer or "vocab_size" in text:
            return "t5"
    raise Scail2Error(
        f"{set_dir}: cannot tell which fixture set this is (files: {sorted(files)}); expected the layout of one of "
        "dit, t5, clip, vae, masks, segments, scheduler, pipeline"
    )


def load_file_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return list(handle.keys())


CHECKS: dict[str, Callable[[Path], list[Record]]] = {
    "dit": _dit_check,
    "t5": _encoder_check("check_t5_fixture"),
    "clip": _encoder_check("check_clip_fixture"),
    "vae": _encoder_check("check_vae_fixture"),
    "masks": check_masks,
    "segments": check_segments,
    "scheduler": check_scheduler,
    "pipeline": check_pipeline,
}


def run_parity(set_dir: str | Path) -> list[Record]:
    """Every case of the fixture set in ``set_dir``."""
    set_dir = Path(set_dir)
    kind = detect_set_kind(set_dir)
    with torch.no_grad():
        records = CHECKS[kind](set_dir)
    if not records:
        raise Scail2Error(f"{set_dir}: the {kind} set has no cases")
    for record in records:
        record["set"] = kind  # the set's kind, whatever the folder is called
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backend.scail2.parity",
        description="Compare this SCAIL-2 implementation with one golden fixture set; one JSON line per case.",
    )
    parser.add_argument("set_dir", type=Path, help="a fixture set folder laid out like tests/data/parity/<set>")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    try:
        records = run_parity(args.set_dir)
    except Scail2Error as exc:
        print(
            json.dumps(
                {
                    "set": args.set_dir.name,
                    "case": "load",
                    "max_rel_err": None,
                    "tol": None,
                    "ok": False,
                    "error": str(exc),
                }
            )
        )
        return 1
    for record in records:
        print(json.dumps(record), flush=True)
    return 0 if all(r["ok"] for r in records) else 1

