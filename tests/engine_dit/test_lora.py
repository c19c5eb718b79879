"""LoRA fusion: Kijai/lightx2v and official SAT formats written here, fused results against the manual
computation in Wan key space, strength changes, unfusing, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from backend.scail2.errors import CheckpointError
from backend.scail2.loaders.dit_keys import official_wan_shapes
from backend.scail2.loaders.lora import LoraManager, load_lora
from backend.scail2.models.transformer_scail2 import SCAIL2Transformer

TINY = {
    "dim": 32,
    "ffn_dim": 48,
    "freq_dim": 16,
    "num_heads": 2,
    "num_layers": 2,
    "text_dim": 24,
    "clip_dim": 20,
}
SHAPES = official_wan_shapes(dim=32, ffn_dim=48, freq_dim=16, num_layers=2, text_dim=24, clip_dim=20)
RANK = 4


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def wan_state() -> dict[str, torch.Tensor]:
    return {k: _randn(*s, seed=i) * 0.2 for i, (k, s) in enumerate(sorted(SHAPES.items()))}


@pytest.fixture
def checkpoint(tmp_path, wan_state) -> Path:
    path = tmp_path / "dit.safetensors"
    save_file(wan_state, str(path))
    return path


def _inputs():
    g = torch.Generator().manual_seed(3)
    return dict(
        latents=torch.randn(1, 16, 2, 4, 8, generator=g),
        timestep=torch.tensor([500]),
        context=torch.randn(1, 3, 24, generator=g),
        clip_features=torch.randn(1, 5, 20, generator=g),
        ref_latents=torch.randn(1, 16, 1, 4, 8, generator=g),
        ref_masks=torch.rand(1, 28, 1, 4, 8, generator=g),
        pose_latents=torch.randn(1, 16, 2, 2, 4, generator=g),
        driving_masks=torch.rand(1, 28, 2, 2, 4, generator=g),
    )


def _kijai_lora(path: Path) -> dict[str, torch.Tensor]:
    """A lightx2v-style LoRA (Wan names, ``diffusion_model.`` prefix) and its deltas in Wan key space."""
    tensors = {
        "blocks.0.self_attn.q.lora_down.weight": _randn(RANK, 32, seed=100),
        "blocks.0.self_attn.q.lora_up.weight": _randn(32, RANK, seed=101),
        "blocks.0.self_attn.q.diff_b": _randn(32, seed=102),
        "blocks.1.ffn.0.lora_down.weight": _randn(RANK, 32, seed=103),
        "blocks.1.ffn.0.lora_up.weight": _randn(48, RANK, seed=104),
        "blocks.1.cross_attn.k_img.lora_down.weight": _randn(RANK, 32, seed=105),
        "blocks.1.cross_attn.k_img.lora_up.weight": _randn(32, RANK, seed=106),
        "blocks.0.cross_attn.norm_k_img.diff": _randn(32, seed=107),
        "blocks.1.norm3.diff_b": _randn(32, seed=108),
        "blocks.1.diff_m": _randn(1, 6, 32, seed=109),
        "head.head.diff_b": _randn(64, seed=110),
        "time_projection.1.lora_down.weight": _randn(RANK, 32, seed=111),
        "time_projection.1.lora_up.weight": _randn(192, RANK, seed=112),
        "blocks.0.modulation.diff": _randn(1, 6, 32, seed=113),
        "patch_embedding.diff_b": _randn(32, seed=114),
        # Wan2.1-I2V's 36-channel input projection: skipped (SCAIL-2 has 20 input channels).
        "patch_embedding.diff": _randn(32, 36, 1, 2, 2, seed=115),
    }
    save_file({"diffusion_model." + k: v for k, v in tensors.items()}, str(path))
    deltas = {}
    for key, value in tensors.items():
        if key.endswith(".lora_down.weight"):
            module = key[: -len(".lora_down.weight")]
            deltas[module + ".weight"] = tensors[module + ".lora_up.weight"] @ value
        elif key.endswith(".diff_b"):
            deltas[key[: -len(".diff_b")] + ".bias"] = value
        elif key.endswith(".diff_m"):
            deltas[key[: -len(".diff_m")] + ".modulation"] = value
        elif key == "patch_embedding.diff":
            continue
        elif key.endswith("modulation.diff"):
            deltas[key[: -len(".diff")]] = value
        elif key.endswith(".diff"):
            deltas[key[: -len(".diff")] + ".weight"] = value
    return deltas


def _sat_lora(path: Path) -> dict[str, torch.Tensor]:
    """An official SAT-format LoRA .pt (state under "module") and its deltas in Wan key space."""
    prefix = "model.diffusion_model.transformer.layers."
    module = {}
    deltas = {}
    seed = 200
    for sat_module, wan_modules, out_dim, in_dim in (
        ("0.attention.query_key_value", ["self_attn.q", "self_attn.k", "self_attn.v"], 32, 32),
        ("1.attention.dense", ["self_attn.o"], 32, 32),
        ("1.cross_attention.query", ["cross_attn.q"], 32, 32),
        ("0.cross_attention.key_value", ["cross_attn.k", "cross_attn.v"], 32, 32),
        ("0.mlp.dense_4h_to_h", ["ffn.2"], 32, 48),
    ):
        for j, wan_module in enumerate(wan_modules):
            layer = f"{prefix}{sat_module}.lora_layer" + (f".{j}" if len(wan_modules) > 1 else "")
            down, up = _randn(RANK, in_dim, seed=seed), _randn(out_dim, RANK, seed=seed + 1)
            seed += 2
            module[f"{layer}.down.weight"] = down
            module[f"{layer}.up.weight"] = up
            deltas[f"blocks.{sat_module.split('.')[0]}.{wan_module}.weight"] = up @ down
    module[f"{prefix}0.attention.dense.lora_layer.diff_b"] = _randn(32, seed=300)
    deltas["blocks.0.self_attn.o.bias"] = module[f"{prefix}0.attention.dense.lora_layer.diff_b"]
    # Not a LoRA tensor: the official converter skips such keys.
    module["model.diffusion_model.transformer.layers.0.attention.dense.weight"] = torch.zeros(32, 32)
    torch.save({"module": module}, path)
    return deltas


def _merged_model(tmp_path, wan_state, *weighted_deltas) -> SCAIL2Transformer:
    """A model loaded from a checkpoint merged by hand in Wan key space."""
    merged = {k: v.clone() for k, v in wan_state.items()}
    for strength, deltas in weighted_deltas:
        for key, delta in deltas.items():
            merged[key] = merged[key] + strength * delta
    path = tmp_path / f"merged_{len(list(tmp_path.iterdir()))}.safetensors"
    save_file(merged, str(path))
    return SCAIL2Transformer.from_single_file(path, TINY)


def _assert_same_weights(model, reference, atol=0.0):
    ref = reference.state_dict()
    for key, value in model.state_dict().items():
        if atol:
            torch.testing.assert_close(value, ref[key], atol=atol, rtol=0, msg=key)
        else:
            assert torch.equal(value, ref[key]), key


def test_kijai_lora_fuses_like_the_manual_computation(tmp_path, wan_state, checkpoint):
    deltas = _kijai_lora(tmp_path / "lightx2v.safetensors")
    model = SCAIL2Transformer.from_single_file(checkpoint, TINY)
    plain = SCAIL2Transformer.from_single_file(checkpoint, TINY)
    manager = LoraManager(model)

    manager.apply({"lightx2v": (tmp_path / "lightx2v.safetensors", 0.7)})
    assert manager.fused == {"lightx2v": 0.7}
    lora = load_lora(tmp_path / "lightx2v.safetensors")
    lora.check(model)
    assert list(lora.skipped) == ["diffusion_model.patch_embedding.diff"]
    _assert_same_weights(model, _merged_model(tmp_path, wan_state, (0.7, deltas)), atol=1e-6)
    with torch.no_grad():
        expected = _merged_model(tmp_path, wan_state, (0.7, deltas))(**_inputs()).sample
        torch.testing.assert_close(model(**_inputs()).sample, expected, atol=1e-5, rtol=1e-5)

    manager.apply({"lightx2v": (tmp_path / "lightx2v.safetensors", -0.25)})
    _assert_same_weights(model, _merged_model(tmp_path, wan_state, (-0.25, deltas)), atol=1e-6)

    manager.unfuse_all()
    assert manager.fused == {}
    _assert_same_weights(model, plain)  # exact: recomputed from the checkpoint


def test_sat_lora_and_two_loras_on_one_parameter(tmp_path, wan_state, checkpoint):
    sat_deltas = _sat_lora(tmp_path / "bias-aware-dpo-lora.pt")
    kijai_deltas = _kijai_lora(tmp_path / "lightx2v.safetensors")
    lora = load_lora(tmp_path / "bias-aware-dpo-lora.pt")
    assert "blocks.0.attn1.to_k.weight" in lora.targets and "blocks.0.attn2.to_v.weight" in lora.targets

    model = SCAIL2Transformer.from_single_file(checkpoint, TINY)
    manager = LoraManager(model)
    manager.apply({"dpo": (lora, 1.0), "lightx2v": (tmp_path / "lightx2v.safetensors", 0.8)})
    _assert_same_weights(
        model, _merged_model(tmp_path, wan_state, (1.0, sat_deltas), (0.8, kijai_deltas)), atol=1e-5
    )

    manager.apply({"dpo": (lora, 0.0), "lightx2v": (tmp_path / "lightx2v.safetensors", 0.8)})
    assert manager.fused == {"lightx2v": 0.8}
    _assert_same_weights(model, _merged_model(tmp_path, wan_state, (0.8, kijai_deltas)), atol=1e-5)


def test_difference_mode_without_checkpoint(tmp_path, wan_state, checkpoint):
    deltas = _kijai_lora(tmp_path / "lightx2v.safetensors")
    model = SCAIL2Transformer.from_single_file(checkpoint, TINY)
    plain = SCAIL2Transformer.from_single_file(checkpoint, TINY)
    manager = LoraManager(model, base_weights=None)
    manager.apply({"a": (tmp_path / "lightx2v.safetensors", 1.0)})
    manager.apply({"a": (tmp_path / "lightx2v.safetensors", 0.5)})
    _assert_same_weights(model, _merged_model(tmp_path, wan_state, (0.5, deltas)), atol=1e-5)
    manager.unfuse_all()
    _assert_same_weights(model, plain, atol=1e-5)


def test_half_precision_unfuse_is_exact(tmp_path, checkpoint):
    _kijai_lora(tmp_path / "lightx2v.safetensors")
    model = SCAIL2Transformer.from_single_file(checkpoint, TINY, torch_dtype=torch.bfloat16)
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    manager = LoraManager(model)
    for strength in (0.8, 0.3, 1.0):
        manager.apply({"lightx2v": (tmp_path / "lightx2v.safetensors", strength)})
    assert not torch.equal(model.blocks[0].attn1.to_q.weight, plain["blocks.0.attn1.to_q.weight"])
    manager.unfuse_all()
    for key, value in model.state_dict().items():
        assert value.dtype == plain[key].dtype and torch.equal(value, plain[key]), key


def test_lora_errors_name_file_and_key(tmp_path, checkpoint):
    model = SCAIL2Transformer.from_single_file(checkpoint, TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    manager = LoraManager(model)
    good = tmp_path / "good.safetensors"
    _kijai_lora(good)

    unknown = tmp_path / "unknown.safetensors"
    save_file(
        {
            "diffusion_model.blocks.0.self_attn.gate.lora_down.weight": torch.zeros(RANK, 32),
            "diffusion_model.blocks.0.self_attn.gate.lora_up.weight": torch.zeros(32, RANK),
        },
        str(unknown),
    )
    with pytest.raises(CheckpointError, match=r"unknown\.safetensors.*self_attn\.gate\.lora_down"):
        manager.apply({"good": (good, 1.0), "bad": (unknown, 1.0)})

    wrong_size = tmp_path / "wan14b.safetensors"
    save_file(
        {
            "blocks.0.ffn.0.lora_down.weight": torch.zeros(RANK, 5120),
            "blocks.0.ffn.0.lora_up.weight": torch.zeros(13824, RANK),
        },
        str(wrong_size),
    )
    with pytest.raises(
        CheckpointError, match=r"wan14b\.safetensors.*blocks\.0\.ffn\.0\.lora_down\.weight.*another model"
    ):
        manager.apply({"big": (wrong_size, 1.0)})

    unpaired = tmp_path / "unpaired.safetensors"
    save_file({"blocks.0.ffn.0.lora_down.weight": torch.zeros(RANK, 32)}, str(unpaired))
    with pytest.raises(CheckpointError, match="no matching lora_up"):
        manager.apply({"x": (unpaired, 1.0)})

    foreign = tmp_path / "foreign.safetensors"
    save_file({"encoder.conv1.weight": torch.zeros(3)}, str(foreign))
    with pytest.raises(CheckpointError, match=r"foreign\.safetensors.*unsupported LoRA key"):
        manager.apply({"x": (foreign, 1.0)})

    with pytest.raises(CheckpointError, match="not found"):
        manager.apply({"x": (tmp_path / "absent.safetensors", 1.0)})

    # Nothing was fused by the failed calls.
    assert manager.fused == {}
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
