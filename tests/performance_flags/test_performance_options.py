"""The performance flags of both command lines, the LoRA pinning that fp8 needs, and ``scail2-generate --fp8`` on
the tiny checkpoint (fp8 linears run on the CPU too)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.scail2.accel import PerformanceSettings
from backend.scail2.accel.options import (
    PinnedLorasError,
    check_pinned_loras,
    format_loras,
    parse_loras,
    performance_overrides,
    pinned_loras,
    prepare_pipeline,
    settings_for,
    transformer_load_device,
)
from backend.scail2.cli import build_parser as generate_parser
from backend.scail2.cli import main as generate_main
from backend.scail2.conditioning.media import VideoClip
from backend.scail2.conditioning.request import GenerationRequest
from backend.scail2.pipelines.output import METADATA_FILE
from backend.scail2.pipelines.pipeline_scail2 import Scail2Pipeline
from backend.scail2.schedulers.presets import SamplingSettings
from backend.worker.cli import build_parser as worker_parser
from backend.worker.warmup import parse_warmup

H100_GIB = 79.2  # what torch reports for an "80 GB" H100
ALL_FLAGS = ["--attention-backend", "cudnn", "--cross-attention-backend", "native", "--strided-attention", "--fp8",
             "--no-compile", "--low-vram", "--keep-encoders", "--no-vae-tiling"]


def _worker_args(*flags: str):
    return worker_parser().parse_args(["serve", "--checkpoint", "c", "--data", "d", *flags])


def _generate_args(*flags: str):
    return generate_parser().parse_args(["--checkpoint", "c", "--reference", "r", "--driving", "d", "--out", "o",
                                         *flags])


@pytest.mark.parametrize("parse", [_worker_args, _generate_args], ids=["scail-worker", "scail2-generate"])
def test_every_flag_reaches_the_settings_and_unset_flags_keep_the_memory_class_defaults(parse):
    assert performance_overrides(parse()) == {}
    assert settings_for("cpu", parse()) == PerformanceSettings(compile_blocks=False)  # the CPU reference path
    explicit = performance_overrides(parse(*ALL_FLAGS))
    assert explicit == {"attention_backend": "cudnn", "cross_attention_backend": "native", "strided_attention": True,
                        "fp8_linear": True, "compile_blocks": False, "low_vram": True, "offload_encoders": False,
                        "vae_tiling": False}
    # On an 80 GB card only what was given changes; the rest stays the class default.
    settings = PerformanceSettings.for_memory(H100_GIB, **performance_overrides(parse("--fp8", "--compile")))
    assert settings == PerformanceSettings(fp8_linear=True)
    assert PerformanceSettings.for_memory(24.0, **performance_overrides(parse("--no-vae-tiling"))) == \
        PerformanceSettings(low_vram=True, vae_tiling=False)
    assert performance_overrides(parse("--offload-encoders")) == {"offload_encoders": True}
    with pytest.raises(SystemExit):
        parse("--offload-encoders", "--keep-encoders")
    with pytest.raises(SystemExit):
        parse("--attention-backend", "fastest")


def test_low_vram_loads_the_dit_into_host_memory_first():
    # A 24/48 GB card cannot hold the 30.6 GiB of bf16 DiT weights even before they are streamed.
    assert transformer_load_device(PerformanceSettings.for_memory(23.6), "cuda:0") == "cpu"
    assert transformer_load_device(PerformanceSettings.for_memory(44.4), "cuda") == "cpu"
    assert transformer_load_device(PerformanceSettings.for_memory(H100_GIB), "cuda") is None
    assert transformer_load_device(PerformanceSettings(low_vram=True), "cpu") is None


def test_lora_and_warmup_values():
    assert parse_loras("lightx2v=0.8, dpo=1") == {"lightx2v": 0.8, "dpo": 1.0}
    assert parse_loras("none") == {}
    for bad in ("lightx2v", "=1", "dpo=strong", "dpo=5"):
        with pytest.raises(ValueError):
            parse_loras(bad)
    assert format_loras({"lightx2v": 0.8, "dpo": 1.0, "relight": 0.0}) == "dpo=1,lightx2v=0.8"
    assert format_loras({}) == "none"
    sizes = parse_warmup("512p,704p, 512x896:41")
    assert [(s.height, s.width, s.frames) for s in sizes] == [(512, 896, 81), (704, 1280, 81), (896, 512, 41)]
    assert parse_warmup("none") == []
    for bad in ("480p", "100x64", "512p:40", "512p:", "512p:5"):  # 5 frames: no longer than the history
        with pytest.raises(ValueError):
            parse_warmup(bad)


def test_pinned_lora_check_names_the_preset_or_the_request():
    pinned = {"lightx2v": 0.8, "dpo": 1.0}
    check_pinned_loras({"dpo": 1.0, "lightx2v": 0.8, "relight": 0.0}, pinned)  # zero strengths are "off"
    with pytest.raises(PinnedLorasError) as by_preset:
        check_pinned_loras(SamplingSettings.from_preset("balanced").loras, pinned, "balanced")
    assert by_preset.value.field == "loras" and "the 'balanced' preset's LoRAs (lightx2v=1)" in str(by_preset.value)
    assert by_preset.value.requested == {"lightx2v": 1.0} and by_preset.value.pinned == pinned
    with pytest.raises(PinnedLorasError, match=r"requested LoRAs \(none\)"):
        check_pinned_loras({}, pinned)


def _request(height: int = 64, width: int = 96, frames: int = 9, loras: dict | None = None) -> GenerationRequest:
    reference = np.full((height, width, 4), 120, np.uint8)
    driving = np.full((frames, height, width, 4), 90, np.uint8)
    for image in (reference[None], driving):
        image[..., 3] = 0
        image[:, 8:-8, 24:-24, 3] = 255
    return GenerationRequest(reference=reference, driving=VideoClip(frames=driving, fps=8.0), prompt="a test",
                             size=(height, width), sampling=SamplingSettings.from_preset("fast", steps=1, seed=3),
                             loras=loras, segment_len=frames)


def test_fp8_pipeline_runs_its_pinned_loras_and_refuses_others_before_computing(tiny_checkpoint):
    pipe = Scail2Pipeline.from_pretrained(tiny_checkpoint, device="cpu", dtype=torch.float32)
    state = prepare_pipeline(pipe, PerformanceSettings.for_device("cpu", fp8_linear=True), {"lightx2v": 0.8})
    assert state.to_dict()["fp8_linears"] == 16 and pinned_loras(pipe) == {"lightx2v": 0.8}
    assert pipe.generate(_request(loras={"lightx2v": 0.8})).frames.shape == (9, 64, 96, 3)
    events = []
    with pytest.raises(PinnedLorasError) as refused:
        pipe.generate(_request(), progress=events.append)  # the fast preset adds dpo=1.0
    assert refused.value.field == "loras" and events == []
    # Without fp8 nothing is pinned: jobs may change their LoRAs.
    plain = Scail2Pipeline.from_pretrained(tiny_checkpoint, device="cpu", dtype=torch.float32)
    prepare_pipeline(plain, PerformanceSettings.for_device("cpu"), {"dpo": 1.0})
    assert pinned_loras(plain) is None and plain.lora_manager.fused == {"dpo": 1.0}


def test_scail2_generate_fp8_fuses_the_request_loras_and_records_the_settings(tiny_checkpoint, tmp_path, capsys):
    request = _request()
    reference, frames = tmp_path / "reference.png", tmp_path / "driving"
    Image.fromarray(request.reference, "RGBA").save(reference)
    frames.mkdir()
    for index, frame in enumerate(request.driving.frames):
        Image.fromarray(frame, "RGBA").save(frames / f"frame_{index:03d}.png")
    out = tmp_path / "out"
    status = generate_main([
        "--checkpoint", str(tiny_checkpoint), "--reference", str(reference), "--driving", str(frames),
        "--fps", "8", "--preset", "fast", "--lora", "dpo=0.5", "--steps", "1", "--seed", "1", "--size", "96x64",
        "--segment-len", "9", "--device", "cpu", "--out", str(out), "--no-progress",
        "--fp8", "--attention-backend", "native", "--no-compile",
    ])  # fmt: skip
    assert status == 0, capsys.readouterr().err
    settings = json.loads((out / METADATA_FILE).read_text())["settings"]
    assert settings["loras"] == {"lightx2v": 0.8, "dpo": 0.5}
    performance = settings["performance"]
    assert performance["fp8_linear"] is True and performance["fp8_linears"] == 16
    assert performance["attention_backend_resolved"] == "native" and performance["compile_blocks"] is False
    assert performance["pinned_loras"] == {"lightx2v": 0.8, "dpo": 0.5}
    assert len(list((out / "frames").iterdir())) == 9


def test_scail2_generate_fp8_with_a_missing_lora_is_a_one_line_error(tiny_checkpoint, tmp_path, capsys):
    request = _request(frames=5)
    reference, driving = tmp_path / "reference.png", tmp_path / "driving.png"
    Image.fromarray(request.reference, "RGBA").save(reference)
    Image.fromarray(request.driving.frames[0], "RGBA").save(driving)
    status = generate_main([
        "--checkpoint", str(tiny_checkpoint), "--reference", str(reference), "--driving", str(driving),
        "--fps", "8", "--lora", "missing=1.0", "--size", "96x64", "--segment-len", "9", "--device", "cpu",
        "--out", str(tmp_path / "out"), "--no-progress", "--fp8", "--no-compile",
    ])  # fmt: skip
    error = capsys.readouterr().err.strip()
    assert status == 2 and len(error.splitlines()) == 1 and "missing" in error
    assert not Path(tmp_path / "out").exists()
