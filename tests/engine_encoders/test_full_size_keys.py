"""The 14B encoders (umT5-XXL, ViT-H/14, Wan2.1 VAE) build on ``meta`` and accept the official key sets.

The official key sets are enumerated from the official module structures with the real sizes; only shapes are
compared, nothing is allocated.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan
from transformers import CLIPVisionModel, UMT5EncoderModel

from backend.scail2.errors import CheckpointError
from backend.scail2.loaders.weights import LazyStateDict, TensorRef, meta_init, verify_state_dict
from backend.scail2.models.image_encoder import (
    ClipVisionConfig,
    convert_official_clip_keys,
    official_clip_shapes,
)
from backend.scail2.models.text_encoder import T5EncoderConfig, convert_official_t5_keys, official_t5_shapes
from backend.scail2.models.vae import WanVAEConfig, convert_official_vae_keys, official_vae_shapes


def _shape_only(shapes: dict[str, tuple[int, ...]], source: str) -> LazyStateDict:
    def unreadable():
        raise AssertionError("verification must not read tensors")

    return LazyStateDict({k: TensorRef(tuple(s), torch.float32, unreadable, k) for k, s in shapes.items()}, source)


def test_umt5_xxl_official_keys_fit_the_transformers_model():
    config = T5EncoderConfig()
    shapes = official_t5_shapes(config)
    assert len(shapes) == 2 + 24 * 10
    assert shapes["token_embedding.weight"] == (256384, 4096)
    with meta_init():
        model = UMT5EncoderModel(config.to_transformers())
    model.tie_weights()
    verify_state_dict(model, convert_official_t5_keys(_shape_only(shapes, "models_t5_umt5-xxl-enc-bf16.pth")))


def test_vit_h_official_keys_fit_the_penultimate_tower():
    config = ClipVisionConfig()
    shapes = official_clip_shapes(config, embed_dim=1024)
    assert shapes["visual.pos_embedding"] == (1, 257, 1280) and "visual.transformer.31.attn.to_qkv.weight" in shapes
    with meta_init():
        model = CLIPVisionModel(config.to_transformers())
    assert len(model.vision_model.encoder.layers if hasattr(model, "vision_model") else model.encoder.layers) == 31
    verify_state_dict(model, convert_official_clip_keys(_shape_only(shapes, "clip.pth"), config))


def test_wan21_vae_official_keys_fit_autoencoder_kl_wan():
    config = WanVAEConfig()
    shapes = official_vae_shapes(config)
    assert shapes["encoder.conv1.weight"] == (96, 3, 3, 3, 3)
    assert shapes["decoder.upsamples.14.residual.6.weight"] == (96, 96, 3, 3, 3)
    with meta_init():
        model = AutoencoderKLWan(**config.to_diffusers_kwargs())
    verify_state_dict(model, convert_official_vae_keys(_shape_only(shapes, "Wan2.1_VAE.pth"), config))


def test_wrong_model_size_is_reported_without_reading():
    tiny = T5EncoderConfig(vocab_size=256, dim=32, dim_attn=32, dim_ffn=64, num_heads=2, encoder_layers=2)
    with meta_init():
        model = UMT5EncoderModel(T5EncoderConfig().to_transformers())
    model.tie_weights()
    with pytest.raises(CheckpointError) as error:
        verify_state_dict(model, convert_official_t5_keys(_shape_only(official_t5_shapes(tiny), "small.pth")))
    message = str(error.value)
    assert message.startswith("small.pth: checkpoint does not match UMT5EncoderModel")
    assert "Missing 220 tensors" in message and "Mis-shaped 22 tensors" in message
    assert (
        "encoder.block.0.layer.0.SelfAttention.k.weight: expected [4096, 4096], found [32, 32] "
        "(file key blocks.0.attn.k.weight)" in message
    )
