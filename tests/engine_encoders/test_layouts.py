"""Every layout the tiny writer produces resolves and loads through the real loaders; broken folders fail clearly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from backend.scail2.errors import CheckpointError
from backend.scail2.loaders import dit_keys
from backend.scail2.loaders.layout import MODEL_CONFIG_FILE, canonical_lora_name, resolve_checkpoint
from backend.scail2.loaders.weights import open_state_dict
from backend.scail2.models.image_encoder import ClipImageEncoder
from backend.scail2.models.text_encoder import UMT5TextEncoder, clean_prompt
from backend.scail2.models.vae import WanVideoVAE
from backend.scail2.testing.tiny import (
    LAYOUTS,
    TINY_CONFIGS,
    tiny_official_state_dicts,
    write_tiny_checkpoint,
)

EXPECTED = {
    # layout: (dit format, dit file name, encoder format, lora files)
    "official": ("sat", "fsdp2_rank_0000_checkpoint.pt", "official",
                 {"dpo": "bias-aware-dpo-lora.pt", "relight": "relighting-lora.pt"}),
    "converted": ("wan", "SCAIL-2.safetensors", "official",
                  {"dpo": "bias-aware-dpo-lora.safetensors", "relight": "relighting-lora.safetensors"}),
    "comfy": ("wan", "wan2.1_14B_SCAIL_2_fp16.safetensors", "diffusers",
              {"dpo": "wan2.1_SCAIL_2_DPO_lora_bf16.safetensors",
               "relight": "wan2.1_SCAIL_2_relight_lora_bf16.safetensors"}),
    "diffusers-encoders": ("sat", "fsdp2_rank_0000_checkpoint.pt", "diffusers",
                           {"dpo": "bias-aware-dpo-lora.pt", "relight": "relighting-lora.pt"}),
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_layouts(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    folders = {"official": tiny_checkpoint}
    for layout in LAYOUTS:
        if layout != "official":
            folders[layout] = write_tiny_checkpoint(root / layout, layout=layout, seed=0)
    return folders


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_resolves_and_encoders_load(tiny_layouts, layout):
    dit_format, dit_name, encoder_format, loras = EXPECTED[layout]
    resolved = resolve_checkpoint(tiny_layouts[layout])
    assert resolved.untrained and resolved.configs["dit"] == TINY_CONFIGS["dit"]
    assert (resolved.dit_format, resolved.dit.name) == (dit_format, dit_name)
    assert resolved.text_encoder.format == resolved.image_encoder.format == resolved.vae.format == encoder_format
    assert {name: path.name for name, path in resolved.loras.items() if name != "lightx2v"} == loras
    assert "lightx2v" in resolved.loras

    space, _ = dit_keys.detect_key_space(open_state_dict(resolved.dit), str(resolved.dit))
    assert space == dit_format

    text = UMT5TextEncoder.from_layout(resolved, dtype=torch.float32)
    prompt, empty = text.encode(["A woman  dances\nin a studio", ""])
    assert prompt.shape[1] == TINY_CONFIGS["t5"]["dim"] and prompt.shape[0] > 2
    assert empty.shape == (1, TINY_CONFIGS["t5"]["dim"])  # "" is just </s>
    assert torch.isfinite(prompt).all()

    image = ClipImageEncoder.from_layout(resolved, dtype=torch.float32)
    tokens = image.encode(torch.rand(3, 48, 80) * 2 - 1)
    assert tokens.shape == (1, 257, TINY_CONFIGS["clip"]["vision_dim"])

    vae = WanVideoVAE.from_layout(resolved)
    latents = vae.encode(torch.rand(3, 5, 16, 16) * 2 - 1)
    assert latents.shape == (16, 2, 2, 2)
    video = vae.decode(latents)
    assert video.shape == (3, 5, 16, 16) and video.abs().max() <= 1


def test_tiny_tokenizer_is_t5_style(tiny_checkpoint):
    text = UMT5TextEncoder.from_layout(resolve_checkpoint(tiny_checkpoint), dtype=torch.float32)
    tokenizer = text.tokenizer
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids, mask = text.tokenize(["a dancer spins"])
    assert ids.shape == mask.shape == (1, 512)
    length = int(mask.sum())
    assert ids[0, length - 1] == 1 and (ids[0, length:] == 0).all() and (ids[0, : length - 1] > 2).all()
    by_ids = text.encode_ids(ids[0, :length])
    torch.testing.assert_close(by_ids[0], text.encode("a dancer spins")[0])


def test_clean_prompt_follows_wan():
    assert clean_prompt("  a &amp;amp; b \n\t c  ") == "a & b c"


def test_tiny_official_keys_match_the_official_key_sets(parity_root):
    """The writer's official T5/CLIP/VAE/DiT files have exactly the fixture sets' keys and shapes."""
    states = tiny_official_state_dicts(seed=0)
    for name in ("t5", "clip", "vae", "dit"):
        with safe_open(str(parity_root / name / "state_dict.safetensors"), "pt") as handle:
            reference = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        assert {k: tuple(v.shape) for k, v in states[name].items()} == reference, name


def test_sat_dit_holds_the_wan_key_set(tiny_checkpoint):
    sat = open_state_dict(tiny_checkpoint / "model" / "1" / "fsdp2_rank_0000_checkpoint.pt")
    prefix = dit_keys.strip_key_prefix(sat)
    wan_keys = {w for k in sat for w in dit_keys.sat_to_wan(k[len(prefix):])}
    assert prefix == "model.diffusion_model."
    assert wan_keys == set(tiny_official_state_dicts(seed=0)["dit"])


@pytest.mark.parametrize("prefix", ["diffusion_model.", "model.diffusion_model."])
def test_prefixed_single_file_dit_is_found(tmp_path, prefix):
    folder = write_tiny_checkpoint(tmp_path / "ckpt", layout="converted", dit_prefix=prefix)
    resolved = resolve_checkpoint(folder)
    assert resolved.dit_format == "wan"
    assert dit_keys.detect_key_space(open_state_dict(resolved.dit)) == ("wan", prefix)


def test_writer_refuses_non_empty_folder_and_unknown_layout(tiny_checkpoint, tmp_path):
    with pytest.raises(FileExistsError):
        write_tiny_checkpoint(tiny_checkpoint)
    with pytest.raises(ValueError, match="unknown layout"):
        write_tiny_checkpoint(tmp_path / "x", layout="gguf")
    assert not (tmp_path / "x").exists()


def test_untrained_marker(tiny_checkpoint):
    assert "UNTRAINED" in (tiny_checkpoint / "README.md").read_text()
    assert json.loads((tiny_checkpoint / MODEL_CONFIG_FILE).read_text())["untrained"] is True
    assert resolve_checkpoint(tiny_checkpoint).untrained


def test_model_config_names_a_trained_model_and_rejects_bad_files(tiny_checkpoint_copy):
    path = tiny_checkpoint_copy / MODEL_CONFIG_FILE
    config = json.loads(path.read_text())
    config.update(untrained=False, name="a small trained model", note="trained on synthetic pairs")
    path.write_text(json.dumps(config))
    layout = resolve_checkpoint(tiny_checkpoint_copy)
    assert not layout.untrained and layout.name == "a small trained model"
    assert layout.configs["dit"]["dim"] == TINY_CONFIGS["dit"]["dim"]
    assert "(a small trained model)" in layout.describe().splitlines()[0]
    for bad, message in [("{", "not valid JSON"), ("[]", "JSON object"), ('{"dit": 3}', "'dit' must be an object"),
                         ('{"untrained": "yes"}', "'untrained' must be true or false")]:  # fmt: skip
        path.write_text(bad)
        with pytest.raises(CheckpointError, match=message):
            resolve_checkpoint(tiny_checkpoint_copy)
    path.unlink()
    plain = resolve_checkpoint(tiny_checkpoint_copy)
    assert plain.configs == {} and not plain.untrained and plain.name == ""


def test_canonical_lora_names(tmp_path):
    names = {
        "lightx2v_I2V_14B_480p_cfg_step_distill_rank128_bf16.safetensors": "lightx2v",
        "bias-aware-dpo-lora.pt": "dpo",
        "wan2.1_SCAIL_2_relight_lora_bf16.safetensors": "relight",
        "My_Style.safetensors": "my_style",
    }
    for file_name, expected in names.items():
        assert canonical_lora_name(tmp_path / file_name) == expected


# --- broken folders ----------------------------------------------------------------------------------------


def test_missing_component_lists_where_it_looked(tiny_checkpoint_copy):
    (tiny_checkpoint_copy / "Wan2.1_VAE.pth").unlink()
    with pytest.raises(CheckpointError) as error:
        resolve_checkpoint(tiny_checkpoint_copy)
    message = str(error.value)
    assert "Wan2.1 VAE not found" in message
    assert str(tiny_checkpoint_copy / "Wan2.1_VAE.pth") in message and str(tiny_checkpoint_copy / "vae") in message


def test_missing_dit_and_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        resolve_checkpoint(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="SCAIL-2 DiT not found") as error:
        resolve_checkpoint(tmp_path)
    assert "fsdp2_rank_0000_checkpoint.pt" in str(error.value)


def test_encoders_from_extra_root(tmp_path, tiny_layouts):
    """A DiT-only folder borrows the shared parts from a Wan2.1-I2V diffusers download."""
    dit_only = tmp_path / "dit_only"
    (dit_only / "diffusion_models").mkdir(parents=True)
    comfy = tiny_layouts["comfy"]
    shutil.copy(comfy / "diffusion_models" / "wan2.1_14B_SCAIL_2_fp16.safetensors", dit_only / "diffusion_models")
    with pytest.raises(CheckpointError, match="umT5 text encoder not found"):
        resolve_checkpoint(dit_only)
    resolved = resolve_checkpoint(dit_only, extra_roots=[comfy])
    assert resolved.vae.path == comfy / "vae" and resolved.dit.parent == dit_only / "diffusion_models"


def test_truncated_vae_fails_naming_the_file(tiny_checkpoint_copy):
    path = tiny_checkpoint_copy / "Wan2.1_VAE.pth"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    resolved = resolve_checkpoint(tiny_checkpoint_copy)
    with pytest.raises(CheckpointError, match="Wan2.1_VAE.pth"):
        WanVideoVAE.from_layout(resolved)


def test_mismatched_text_encoder_names_file_keys_and_shapes(tiny_checkpoint_copy):
    path = tiny_checkpoint_copy / "umt5-xxl" / "models_t5_umt5-xxl-enc-bf16.pth"
    state = torch.load(path, weights_only=True)
    del state["blocks.1.ffn.fc2.weight"]
    state["norm.weight"] = torch.ones(48, dtype=torch.bfloat16)
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        UMT5TextEncoder.from_layout(resolve_checkpoint(tiny_checkpoint_copy))
    message = str(error.value)
    assert str(path) in message
    assert "encoder.block.1.layer.1.DenseReluDense.wo.weight" in message
    assert "encoder.final_layer_norm.weight: expected [32], found [48] (file key norm.weight)" in message


def test_wrong_component_file_is_rejected(tiny_checkpoint_copy):
    """A VAE file where the CLIP file should be: the CLIP loader says it is not an open-clip tower."""
    shutil.copy(tiny_checkpoint_copy / "Wan2.1_VAE.pth",
                tiny_checkpoint_copy / "models_clip_open-clip-xlm-roberta-large-vit-huge-14-onlyvisual.pth")
    with pytest.raises(CheckpointError, match="not an open-clip ViT visual tower"):
        ClipImageEncoder.from_layout(resolve_checkpoint(tiny_checkpoint_copy))


def test_corrupt_single_file_dit_fails_naming_the_file(tmp_path):
    folder = write_tiny_checkpoint(tmp_path / "ckpt", layout="comfy")
    path = folder / "diffusion_models" / "wan2.1_14B_SCAIL_2_fp16.safetensors"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="wan2.1_14B_SCAIL_2_fp16.safetensors"):
        resolve_checkpoint(folder)


def test_quantized_comfy_files_are_named_when_skipped(tmp_path, tiny_layouts):
    folder = tmp_path / "quantized"
    (folder / "diffusion_models").mkdir(parents=True)
    source = tiny_layouts["comfy"] / "diffusion_models" / "wan2.1_14B_SCAIL_2_fp16.safetensors"
    shutil.copy(source, folder / "diffusion_models" / "wan2.1_14B_SCAIL_2_fp8_scaled.safetensors")
    with pytest.raises(CheckpointError, match="Quantised ComfyUI files are not supported"):
        resolve_checkpoint(folder)


def test_command_line_writes_a_folder_and_refuses_to_overwrite(tmp_path, capsys):
    from backend.scail2.testing.tiny import main

    target = tmp_path / "cli"
    assert main([str(target), "--layout", "converted", "--dit-prefix", "diffusion_model."]) == 0
    assert "UNTRAINED" in capsys.readouterr().out
    assert resolve_checkpoint(target).dit.name == "SCAIL-2.safetensors"
    assert main([str(target)]) == 2
    assert "exists" in capsys.readouterr().err
