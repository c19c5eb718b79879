"""DiT checkpoint loading: the official 14B key sets on the meta device, every key space on a tiny model, and
clear errors for missing, unexpected, mis-shaped, truncated and foreign files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from backend.scail2.errors import CheckpointError
from backend.scail2.loaders.dit_keys import (
    detect_key_space,
    internal_to_wan,
    internal_to_wan_state_dict,
    official_wan_shapes,
    sat_key_for_wan,
    sat_to_wan,
    wan_to_internal,
    wan_to_sat_state_dict,
)
from backend.scail2.models.transformer_scail2 import SCAIL2Transformer, config_from_official
from backend.scail2.testing.parity import relative_error
from backend.scail2.testing.tiny import random_dit_inputs

TINY = {
    "dim": 32,
    "ffn_dim": 48,
    "freq_dim": 16,
    "num_heads": 2,
    "num_layers": 2,
    "text_dim": 24,
    "clip_dim": 20,
}
# Two loads of the same weights give outputs that differ by ~1.5e-7 (relative) on some CPUs: the loaded tensors'
# memory alignment picks other vectorised kernels, which sum in another order. A wrong weight moves the output by
# 1e-3 or more (see the test), so a tolerance far below that and far above the rounding noise.
SAME_WEIGHTS_TOLERANCE = 1e-5
TINY_WAN_SHAPES = dict(dim=32, ffn_dim=48, freq_dim=16, num_layers=2, text_dim=24, clip_dim=20)


def _meta_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def _random_wan_state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(s, generator=generator) / max(1, s[-1]) ** 0.5
        for k, s in sorted(official_wan_shapes(**TINY_WAN_SHAPES).items())
    }


def _tiny_inputs(seed: int = 1, frames: int = 2, height: int = 8, width: int = 4) -> dict[str, torch.Tensor]:
    return random_dit_inputs(TINY["text_dim"], TINY["clip_dim"], seed, frames, height, width)


# --- the official 14B key sets --------------------------------------------------------------------------------


def test_official_14b_wan_keys_load_on_meta():
    shapes = official_wan_shapes()
    assert len(shapes) == 1307
    for state, config in ((_meta_state(shapes), None), (_meta_state(shapes), {})):
        model = SCAIL2Transformer.from_state_dict(state, config, torch_dtype=torch.bfloat16, device="meta")
        params = dict(model.named_parameters())
        assert len(params) == 1307
        assert all(p.is_meta for p in params.values())
        assert model.config.dim == 5120 and model.config.num_layers == 40 and model.config.num_heads == 40
        assert sum(p.numel() for p in params.values()) == sum(torch.Size(s).numel() for s in shapes.values())
        # Half precision everywhere except the time embedding, modulation tables and norms.
        assert params["blocks.7.attn1.to_q.weight"].dtype == torch.bfloat16
        assert params["blocks.7.scale_shift_table"].dtype == torch.float32
        assert params["condition_embedder.time_proj.weight"].dtype == torch.float32
        assert params["proj_out.weight"].dtype == torch.float32


@pytest.mark.parametrize("prefix", ["", "diffusion_model.", "model.diffusion_model."])
def test_official_14b_wan_keys_with_prefixes(prefix):
    state = {prefix + k: v for k, v in _meta_state(official_wan_shapes()).items()}
    model = SCAIL2Transformer.from_state_dict(state, device="meta")
    assert sum(1 for _ in model.parameters()) == 1307


def test_official_14b_sat_keys_load_on_meta():
    sat = wan_to_sat_state_dict(_meta_state(official_wan_shapes()))
    assert len(sat) == 987
    assert all(k.startswith("model.diffusion_model.") for k in sat)
    assert sat["model.diffusion_model.transformer.layers.3.attention.query_key_value.weight"].shape == (
        15360,
        5120,
    )
    assert sat["model.diffusion_model.mixins.adaln_layer.clip_feature_key_value_list.3.bias"].shape == (
        10240,
    )
    model = SCAIL2Transformer.from_state_dict(sat, device="meta")
    assert sum(1 for _ in model.parameters()) == 1307


def test_key_maps_round_trip():
    for key in official_wan_shapes(num_layers=2):
        internal = wan_to_internal(key)
        assert internal is not None and internal_to_wan(internal) == key
        sat_key, index, parts = sat_key_for_wan(key)
        assert sat_to_wan(sat_key)[index] == key and len(sat_to_wan(sat_key)) == parts
    assert wan_to_internal("blocks.0.norm3.weight") == "blocks.0.norm2.weight"
    assert wan_to_internal("blocks.0.cross_attn.k_img.bias") == "blocks.0.attn2.add_k_proj.bias"
    assert wan_to_internal("head.modulation") == "scale_shift_table"
    assert wan_to_internal("vae.decoder.conv.weight") is None


def test_fixture_key_set_is_the_official_one(parity_root):
    fixture = parity_root / "dit"
    config = json.loads((fixture / "config.json").read_text())
    args = config["constructor_args"]
    expected = official_wan_shapes(
        dim=args["dim"],
        ffn_dim=args["ffn_dim"],
        num_layers=args["num_layers"],
        text_dim=args["text_dim"],
        freq_dim=args["freq_dim"],
        clip_dim=config["clip_dim"],
    )
    stored = {k: tuple(v.shape) for k, v in load_file(str(fixture / "state_dict.safetensors")).items()}
    assert stored == expected


# --- every key space on a tiny checkpoint ---------------------------------------------------------------------


def test_all_key_spaces_give_the_same_model(tmp_path):
    wan = _random_wan_state()
    save_file(wan, str(tmp_path / "wan.safetensors"))
    save_file(
        {"model.diffusion_model." + k: v for k, v in wan.items()}, str(tmp_path / "prefixed.safetensors")
    )
    torch.save({"module": wan_to_sat_state_dict(wan)}, tmp_path / "fsdp2_rank_0000_checkpoint.pt")
    torch.save(wan, tmp_path / "wan.pth")

    reference = SCAIL2Transformer.from_single_file(tmp_path / "wan.safetensors", TINY)
    # A saved diffusers config (bookkeeping keys included) is accepted as the config.
    saved_config = json.loads(reference.to_json_string())
    assert "_class_name" in saved_config
    SCAIL2Transformer.from_single_file(tmp_path / "wan.safetensors", saved_config)
    inputs = _tiny_inputs()
    with torch.no_grad():
        expected = reference(**inputs).sample
    assert expected.shape == (1, 16, 2, 8, 4)

    internal = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(internal, str(tmp_path / "internal.safetensors"))
    assert internal_to_wan_state_dict(internal).keys() == wan.keys()

    def output_error(path) -> float:
        with torch.no_grad():
            return relative_error(SCAIL2Transformer.from_single_file(path, TINY)(**inputs).sample, expected)

    for name in ("prefixed.safetensors", "fsdp2_rank_0000_checkpoint.pt", "wan.pth", "internal.safetensors"):
        model = SCAIL2Transformer.from_single_file(tmp_path / name, TINY)
        for key, value in model.state_dict().items():
            assert torch.equal(value, internal[key]), (name, key)
        assert output_error(tmp_path / name) <= SAME_WEIGHTS_TOLERANCE, name

    # The tolerance still tells a wrong weight apart: q and k of one block swapped, or one FFN matrix replaced.
    swapped = dict(wan)
    swapped["blocks.0.self_attn.q.weight"], swapped["blocks.0.self_attn.k.weight"] = (
        wan["blocks.0.self_attn.k.weight"], wan["blocks.0.self_attn.q.weight"])
    replaced = {**wan, "blocks.1.ffn.2.weight": _random_wan_state(seed=5)["blocks.1.ffn.2.weight"]}
    for name, state in (("swapped", swapped), ("replaced", replaced)):
        save_file(state, str(tmp_path / f"{name}.safetensors"))
        assert output_error(tmp_path / f"{name}.safetensors") > 100 * SAME_WEIGHTS_TOLERANCE, name


def test_config_inferred_from_shapes_and_dtype(tmp_path):
    wan = _random_wan_state()
    save_file(wan, str(tmp_path / "wan.safetensors"))
    # Without a config, num_heads comes from a head size of 128: give a matching dim.
    state = {k: torch.empty(s, device="meta") for k, s in official_wan_shapes(dim=256, num_layers=1).items()}
    model = SCAIL2Transformer.from_state_dict(state, device="meta")
    assert (model.config.dim, model.config.num_heads, model.config.num_layers) == (256, 2, 1)

    half = SCAIL2Transformer.from_single_file(tmp_path / "wan.safetensors", TINY, torch_dtype=torch.bfloat16)
    assert half.blocks[0].ffn.net[2].weight.dtype == torch.bfloat16
    assert half.scale_shift_table.dtype == torch.float32
    with torch.no_grad():
        out = half(**_tiny_inputs()).sample
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_bf16_autocast_keeps_fp32_residual_and_stays_close(tmp_path):
    path = tmp_path / "wan.safetensors"
    save_file(_random_wan_state(), str(path))
    model = SCAIL2Transformer.from_single_file(path, TINY)
    inputs = _tiny_inputs()
    seen = []
    hook = model.blocks[1].register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    with torch.no_grad():
        reference = model(**inputs).sample
        with torch.autocast("cpu", torch.bfloat16):
            mixed = model(**inputs).sample
    hook.remove()
    assert seen == [torch.float32, torch.float32]
    assert mixed.dtype == torch.float32
    assert (mixed - reference).abs().max() / reference.abs().max() < 5e-2


def test_config_from_official_rejects_unsupported_settings():
    config = config_from_official(
        {"model_type": "i2v", "dim": 64, "num_heads": 2, "patch_size": [1, 2, 2]}, 32
    )
    assert config == {"clip_dim": 32, "dim": 64, "num_heads": 2, "patch_size": (1, 2, 2)}
    with pytest.raises(ValueError, match="model_type"):
        config_from_official({"model_type": "t2v"})
    with pytest.raises(ValueError, match="pose_rope_shift"):
        config_from_official({"pose_rope_shift": [0, 0, 60]})
    with pytest.raises(ValueError, match="unknown"):
        config_from_official({"num_experts": 8})


# --- errors ---------------------------------------------------------------------------------------------------


def test_missing_unexpected_and_misshaped_tensors_are_named(tmp_path):
    wan = _random_wan_state()
    broken = dict(wan)
    del broken["blocks.1.self_attn.q.weight"]
    broken["blocks.1.extra_gate"] = torch.zeros(3)
    broken["blocks.0.ffn.0.weight"] = torch.zeros(47, 32)
    path = tmp_path / "broken.safetensors"
    save_file(broken, str(path))
    with pytest.raises(CheckpointError) as info:
        SCAIL2Transformer.from_single_file(path, TINY)
    message = str(info.value)
    assert str(path) in message
    assert "blocks.1.self_attn.q.weight" in message
    assert "blocks.1.extra_gate" in message
    assert "blocks.0.ffn.0.weight: expected [48, 32], found [47, 32]" in message


def test_sat_errors_name_sat_keys(tmp_path):
    sat = wan_to_sat_state_dict(_random_wan_state())
    del sat["model.diffusion_model.mixins.adaln_layer.adaLN_modulations.1"]
    sat["model.diffusion_model.transformer.layers.0.attention.query_key_value.weight"] = torch.zeros(95, 32)
    path = tmp_path / "fsdp2_rank_0000_checkpoint.pt"
    torch.save({"module": sat}, path)
    with pytest.raises(CheckpointError) as info:
        SCAIL2Transformer.from_single_file(path, TINY)
    message = str(info.value)
    assert str(path) in message and "query_key_value.weight" in message and "3 equal parts" in message
    del sat["model.diffusion_model.transformer.layers.0.attention.query_key_value.weight"]
    torch.save({"module": sat}, path)
    with pytest.raises(CheckpointError) as info:
        SCAIL2Transformer.from_single_file(path, TINY)
    assert "mixins.adaln_layer.adaLN_modulations.1" in str(info.value)
    assert "query_key_value.weight (part 1 of 3" in str(info.value)


def test_wrong_model_size_is_reported(tmp_path):
    path = tmp_path / "wan.safetensors"
    save_file(_random_wan_state(), str(path))
    with pytest.raises(CheckpointError, match=r"Mis-shaped .*expected \[64"):
        SCAIL2Transformer.from_single_file(path, {**TINY, "dim": 64})
    with pytest.raises(CheckpointError, match="Missing"):
        SCAIL2Transformer.from_single_file(path, {**TINY, "num_layers": 3})


def test_truncated_corrupt_and_foreign_files(tmp_path):
    good = tmp_path / "wan.safetensors"
    save_file(_random_wan_state(), str(good))
    data = good.read_bytes()

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        SCAIL2Transformer.from_single_file(truncated, TINY)

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        SCAIL2Transformer.from_single_file(corrupt, TINY)

    truncated_pt = tmp_path / "truncated.pt"
    torch.save(_random_wan_state(), truncated_pt)
    truncated_pt.write_bytes(truncated_pt.read_bytes()[:-5000])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        SCAIL2Transformer.from_single_file(truncated_pt, TINY)

    foreign = tmp_path / "vae.safetensors"
    save_file(
        {"encoder.conv1.weight": torch.zeros(2, 2), "decoder.head.0.gamma": torch.zeros(2)}, str(foreign)
    )
    with pytest.raises(CheckpointError, match="no SCAIL-2 DiT keys"):
        SCAIL2Transformer.from_single_file(foreign, TINY)

    with pytest.raises(CheckpointError, match="not found"):
        SCAIL2Transformer.from_single_file(tmp_path / "absent.safetensors", TINY)


def test_comfy_quantized_file_gets_a_hint(tmp_path):
    state = _random_wan_state()
    state["blocks.0.self_attn.q.scale_weight"] = torch.ones(1)
    path = tmp_path / "fp8_scaled.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="quantized"):
        SCAIL2Transformer.from_single_file(path, TINY)


def test_detect_key_space():
    assert detect_key_space(["model.diffusion_model.transformer.layers.0.attention.dense.weight"]) == (
        "sat",
        "model.diffusion_model.",
    )
    assert detect_key_space(["diffusion_model.blocks.0.ffn.0.weight"]) == ("wan", "diffusion_model.")
    assert detect_key_space(["blocks.0.attn1.to_q.weight"]) == ("internal", "")


def test_forward_rejects_bad_shapes():
    model = SCAIL2Transformer(**TINY)
    inputs = _tiny_inputs()
    with pytest.raises(ValueError, match="pose_latents must have shape"):
        model(**{**inputs, "pose_latents": inputs["pose_latents"][:, :, :1]})
    with pytest.raises(ValueError, match="together"):
        model(**inputs, extra_ref_latents=inputs["ref_latents"])
    with pytest.raises(ValueError, match="at most text_len"):
        model(**{**inputs, "context": torch.zeros(1, 513, TINY["text_dim"])})
