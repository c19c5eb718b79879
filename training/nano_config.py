"""SCAIL-2 Nano: the sizes of every component, what it was trained for, and its sampling presets.

One place for the numbers the training scripts, the checkpoint writer and the docs share. Component configs use
the argument names of the classes that load them (official ``SCAIL2Model`` names for the DiT, diffusers
``AutoencoderKLWan`` for the VAE, transformers for umT5 and CLIP), so the checkpoint folder carries them as data.

Sizes (parameters): DiT 5.8 M (dim 192, 8 layers, 3 heads of 64), VAE 2.6 M (Wan2.1 structure, base width 16,
z 16, 8x spatial and 4x temporal compression), umT5 and CLIP each well under 0.1 M (random, frozen: the DiT
learns to ignore the text and leans on the reference latents rather than on CLIP).
"""

from __future__ import annotations

# Trained for 128x128 pixels (16x16 latents, 8x8 video tokens per latent frame) and windows of 33 frames
# (9 latent frames) with SCAIL-2's 5 history frames: a two-window clip is 61 frames.
HEIGHT = 128
WIDTH = 128
SEGMENT_LEN = 33
SEGMENT_OVERLAP = 5

# Official SCAIL2Model constructor arguments (see backend.scail2.transformer_scail2.config_from_official).
DIT_CONFIG: dict = {
    "model_type": "i2v",
    "patch_size": [1, 2, 2],
    "text_len": 512,
    "in_dim": 20,
    "mask_dim": 28,
    "dim": 192,
    "ffn_dim": 768,
    "freq_dim": 256,
    "text_dim": 32,
    "out_dim": 16,
    "num_heads": 3,
    "num_layers": 8,
    "window_size": [-1, -1],
    "qk_norm": True,
    "cross_attn_norm": True,
    "eps": 1e-6,
    "clip_dim": 32,
}

# diffusers AutoencoderKLWan arguments: the Wan2.1 VAE structure (causal 3D convolutions, 8x8 spatial and 4x
# temporal compression, 16 latent channels) at a sixth of its width and one residual block per stage.
# latents_mean/latents_std are measured after training (train_vae.latent_statistics) and written with it.
VAE_CONFIG: dict = {
    "base_dim": 16,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 1,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
}

# Official umt5 / open-clip argument names, as backend.scail2.tiny uses them (random and frozen).
T5_CONFIG: dict = {
    "vocab_size": 256,
    "dim": 32,
    "dim_attn": 32,
    "dim_ffn": 64,
    "num_heads": 2,
    "encoder_layers": 2,
    "num_buckets": 32,
    "shared_pos": False,
    "text_len": 512,
}
CLIP_CONFIG: dict = {
    "embed_dim": 16,
    "image_size": 224,
    "patch_size": 14,
    "vision_dim": 32,
    "vision_mlp_ratio": 4,
    "vision_heads": 2,
    "vision_layers": 3,
    "vision_pre_norm": True,
    "activation": "gelu",
    "norm_eps": 1e-5,
}

# The training objective's time shift and the sampler the presets use (tuned on held-out pairs, docs/NANO.md).
TRAIN_SHIFT = 3.0
PRESETS: dict[str, dict] = {
    "fast": {"sampler": "euler", "steps": 6, "guidance": 1.0, "shift": 3.0, "loras": {}},
    "balanced": {"sampler": "euler", "steps": 10, "guidance": 1.0, "shift": 3.0, "loras": {}},
    "quality": {"sampler": "unipc", "steps": 16, "guidance": 1.0, "shift": 3.0, "loras": {}},
}

# Prompts the DiT sees during training (the empty prompt a third of the time): with a random text encoder the
# prompt carries no meaning, so the model is trained to give the same video whatever the user types.
PROMPT_SUBJECTS = ("character", "creature", "animal", "robot", "figure", "dancer", "dog", "cat", "lizard", "bird")
PROMPT_ACTIONS = ("walking", "dancing", "running", "jumping", "turning around", "waving", "stretching", "moving")
PROMPT_PLACES = ("", " in a studio", " on a green field", " at sunset", " against a plain wall", " outdoors")


def prompt_bank() -> list[str]:
    """The training prompts: the empty one plus short descriptions built from the lists above."""
    prompts = [""]
    for i, subject in enumerate(PROMPT_SUBJECTS):
        for j, action in enumerate(PROMPT_ACTIONS):
            place = PROMPT_PLACES[(i + j) % len(PROMPT_PLACES)]
            prompts.append(f"a {subject} {action}{place}")
    return prompts
