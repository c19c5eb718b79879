"""SCAIL-2 Nano training: its inputs are the inference pipeline's, and its pieces do what the scripts rely on.

The parity test runs the real ``Scail2Pipeline`` (tiny untrained checkpoint) on motion pairs and checks that
``nano_data.encode_window`` gives the DiT exactly what ``denoise_windows`` gives it, per mode and for two
characters, so training and inference cannot drift apart.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.scail2 import SamplingSettings
from backend.scail2.conditioning.masks import image_to_unit_range
from backend.scail2.conditioning.request import prepare_inputs
from backend.scail2.pipelines.pipeline_scail2 import FrameSource, Scail2Pipeline
from backend.scail2.testing.tiny import TINY_CONFIGS, write_tiny_checkpoint
from training.export import generation_request
from training.nano_data import (
    WindowBuffer,
    character_weight,
    chunk_seed,
    chunk_setting,
    encode_window,
    pack,
    pair_tensors,
    unpack,
)
from training.pairs import TRAIN_SEEDS
from training.train_dit import HISTORY_LATENT_FRAMES, DitTrainer, build_dit, flow_inputs
from training.train_nano import load_sharded, save_sharded
from training.train_vae import build_vae, chunk_clips, vae_loss

from .conftest import FRAMES, SIZE


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    folder = write_tiny_checkpoint(tmp_path_factory.mktemp("nano") / "tiny", "diffusers-encoders")
    return Scail2Pipeline.from_pretrained(folder, device="cpu", dtype=torch.float32)


def _pipeline_inputs(pipe: Scail2Pipeline, batch, index: int) -> dict[str, torch.Tensor]:
    """The first window's DiT inputs as ``Scail2Pipeline.generate`` builds them for pair ``index``."""
    sampling = SamplingSettings(sampler="euler", steps=1, guidance=1.0, shift=3.0, seed=0)
    request = generation_request(batch, index, sampling=sampling, segment_len=FRAMES, segment_overlap=5)
    prepared = prepare_inputs(request)
    reference = image_to_unit_range(prepared.reference.permute(2, 0, 1))
    reference_mask = image_to_unit_range(prepared.reference_mask.permute(2, 0, 1))
    conditions = pipe.encode_conditions(request, prepared, reference, reference_mask, sampling)
    windows = pipe.plan_windows(prepared.num_frames, request)
    trace: dict[str, torch.Tensor] = {}
    pipe.denoise_windows(conditions, FrameSource(prepared.driving, prepared.driving_mask), windows[:1], sampling,
                         replace=request.mode == "replacement", height=prepared.height, width=prepared.width,
                         trace=trace)  # fmt: skip
    return {
        "ref_latent": conditions.ref_latent,
        "ref_mask": conditions.ref_mask,
        "clip": conditions.clip_features[0],
        "pose_latent": trace["w0_pose_latent"],
        "driving_masks": trace["w0_driving_masks"],
    }


@pytest.mark.parametrize("batch_name", ["animation_batch", "replacement_batch", "two_character_batch"])
def test_training_inputs_are_the_pipelines(tiny_pipeline, batch_name, request):
    batch = request.getfixturevalue(batch_name)
    window = encode_window(pair_tensors(batch), batch.mode, tiny_pipeline.vae, tiny_pipeline.image_encoder,
                           torch.device("cpu"))  # fmt: skip
    for index in range(len(batch)):
        expected = _pipeline_inputs(tiny_pipeline, batch, index)
        for key, value in expected.items():
            torch.testing.assert_close(window[key][index], value.float(), atol=1e-5, rtol=1e-5, msg=key)
    latent_frames = (FRAMES - 1) // 4 + 1
    assert window["x0"].shape == (len(batch), 16, latent_frames, SIZE[0] // 8, SIZE[1] // 8)
    assert window["weight"].shape == (len(batch), 1, latent_frames, SIZE[0] // 8, SIZE[1] // 8)


def test_character_weight_covers_the_target(animation_batch):
    weight = character_weight(animation_batch.target_ids, (FRAMES - 1) // 4 + 1)
    assert 0.0 <= float(weight.min()) and float(weight.max()) <= 1.0
    assert float(weight.sum()) > 0
    empty = character_weight(torch.zeros_like(animation_batch.target_ids), (FRAMES - 1) // 4 + 1)
    assert float(empty.sum()) == 0.0


def test_chunks_use_train_seeds_and_every_setting():
    seeds = {chunk_seed(3, chunk) for chunk in range(200)}
    assert all(seed in TRAIN_SEEDS for seed in seeds) and len(seeds) == 200
    assert {chunk_setting(3, chunk).name for chunk in range(200)} == {
        "animation-1", "replacement-1", "animation-2", "replacement-2"}  # fmt: skip
    with pytest.raises(ValueError, match="train seed range"):
        chunk_seed(10**4, 0)


def test_chunks_travel_as_bytes(animation_batch):
    chunk = {"chunk": 4, "setting": "animation-1", **pair_tensors(animation_batch)}
    data = pack(chunk)
    assert isinstance(data, bytes)
    restored = unpack(data)
    assert restored["setting"] == "animation-1" and restored["chunk"] == 4
    for key, value in pair_tensors(animation_batch).items():
        assert torch.equal(restored[key], value)


def test_window_buffer_keeps_the_newest(animation_batch):
    buffer = WindowBuffer(capacity=5, device=torch.device("cpu"))
    for start in range(0, 8, 2):
        buffer.add("animation-1", {"x0": torch.full((2, 3), float(start)), "ref_mask": torch.ones(2, 1)})
    assert buffer.filled["animation-1"] == 5 and buffer.added == 8
    kept = sorted(set(buffer.store["animation-1"]["x0"][:, 0].tolist()))
    assert kept == [2.0, 4.0, 6.0]  # the oldest pair of windows was overwritten
    sample = buffer.sample("animation-1", 7, torch.Generator().manual_seed(0))
    assert sample["x0"].shape == (7, 3) and sample["x0"].dtype == torch.float32


def test_flow_inputs_pin_history_and_skip_its_loss():
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 16, 5, 4, 4)
    window = {"x0": x0, "weight": torch.rand(64, 1, 5, 4, 4)}
    inputs = flow_inputs(window, generator)
    history = inputs["history_mask"][:, 0, 0, 0, 0] == 1
    assert 0 < int(history.sum()) < 64  # some samples are later windows, some first windows
    pinned = slice(0, HISTORY_LATENT_FRAMES)
    assert torch.equal(inputs["latents"][history][:, :, pinned], x0[history][:, :, pinned])
    assert float(inputs["weight"][history][:, :, pinned].abs().sum()) == 0.0
    assert bool((inputs["weight"][~history] >= 1.0).all())
    # x_t = (1 - sigma) x0 + sigma eps with v = eps - x0, so x_t = x0 + sigma v on the noised frames.
    sigma = (inputs["timestep"] / 1000).view(-1, 1, 1, 1, 1)
    free = ~history
    torch.testing.assert_close(inputs["latents"][free], (x0 + sigma * inputs["target"])[free], atol=1e-5, rtol=1e-5)


def test_one_dit_step_learns_and_moves_the_ema():
    torch.manual_seed(0)
    trainer = DitTrainer(build_dit(TINY_CONFIGS["dit"]), torch.device("cpu"), warmup_steps=1)
    before = [e.clone() for e in trainer.ema]
    generator = torch.Generator().manual_seed(0)
    window = {
        "x0": torch.randn(2, 16, 3, 8, 8), "weight": torch.zeros(2, 1, 3, 8, 8),
        "ref_latent": torch.randn(2, 16, 1, 8, 8), "ref_mask": torch.rand(2, 28, 1, 8, 8),
        "pose_latent": torch.randn(2, 16, 3, 4, 4), "driving_masks": torch.rand(2, 28, 3, 4, 4),
        "clip": torch.randn(2, 257, 32),
    }  # fmt: skip
    metrics = trainer.train_step(window, torch.randn(2, 5, 32), False, generator)
    assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    assert trainer.step == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.ema, strict=True))


def test_vae_clips_and_loss(animation_batch):
    generator = torch.Generator().manual_seed(0)
    chunk = pair_tensors(animation_batch)
    shapes = {tuple(chunk_clips(chunk, torch.device("cpu"), generator, 2)[0].shape) for _ in range(12)}
    assert shapes <= {(2, 3, 9, 32, 32), (2, 3, 9, 64, 64)} and len(shapes) >= 1
    video, weight = chunk_clips(chunk, torch.device("cpu"), generator, 2, training=False)
    assert video.shape == (2, 3, 9, *SIZE) and weight.shape == (2, 1, 9, *SIZE)
    assert float(video.min()) >= -1.0 and float(video.max()) <= 1.0
    model = build_vae({"base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1, "attn_scales": [],
                       "temperal_downsample": [False, True, True]})  # fmt: skip
    loss, metrics = vae_loss(model, video[:, :, :5], weight[:, :, :5])
    loss.backward()
    assert np.isfinite(metrics["psnr"]) and all(p.grad is not None for p in model.encoder.parameters())


def test_sharded_weights_round_trip(tmp_path):
    state = {f"w{i}": torch.randn(64, 64) for i in range(6)}
    paths = save_sharded(state, tmp_path / "dit")
    assert [p.name for p in paths] == ["dit-1.safetensors", "dit-2.safetensors"]
    restored = load_sharded(tmp_path / "dit")
    assert restored.keys() == state.keys() and all(torch.equal(restored[k], state[k]) for k in state)
