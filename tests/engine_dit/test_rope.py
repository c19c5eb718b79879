"""The RoPE tables against the per-token multipliers the official model applied (fixture ``debug_rope``)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from backend.scail2.models.rope import TokenLayout, scail2_rope_multipliers, scail2_rope_tables


def test_multipliers_match_the_official_ones_per_token(parity_root):
    fixture = parity_root / "dit"
    config = json.loads((fixture / "config.json").read_text())
    head_dim = config["constructor_args"]["dim"] // config["constructor_args"]["num_heads"]
    for case in config["cases"].values():
        tensors = load_file(str(fixture / case["file"]), device="cpu")
        frames, height, width = tensors["x"].shape[1:]
        layout = TokenLayout(frames, height // 2, width // 2, case["n_add"], case["replace_flag"])
        tokens = case["tokens"]
        assert (layout.extra_ref_tokens, layout.ref_tokens, layout.video_tokens, layout.driving_tokens) == (
            tokens["additional_ref"],
            tokens["ref"],
            tokens["video"],
            tokens["pose"],
        )
        ours = torch.view_as_real(scail2_rope_multipliers(head_dim, layout)).float()
        assert torch.equal(ours, tensors["debug_rope"]), case["name"]

        # The driving tokens are avg-pooled rotations: magnitude below one, never renormalised.
        magnitude = ours.norm(dim=-1)
        assert magnitude[: -layout.driving_tokens].sub(1).abs().max() < 1e-6
        assert magnitude[-layout.driving_tokens :].min() < 0.9


def test_tables_are_the_multipliers_in_the_wan_processor_layout():
    layout = TokenLayout(frames=2, height=4, width=6, extra_ref_frames=1, replace=True)
    multipliers = scail2_rope_multipliers(32, layout)
    cos, sin = scail2_rope_tables(32, layout, dtype=torch.float64)
    assert cos.shape == sin.shape == (1, layout.total_tokens, 1, 32)
    assert torch.equal(cos[0, :, 0, 0::2], multipliers.real) and torch.equal(
        cos[0, :, 0, 1::2], multipliers.real
    )
    assert torch.equal(sin[0, :, 0, 1::2], multipliers.imag)
