"""The strided-SDPA attention processor computes what diffusers' WanAttnProcessor computes (SCAIL-2 DiT)."""

import torch

from backend.scail2.accel.processor import StridedSDPAProcessor, apply_rotary_table, use_strided_attention
from backend.scail2.models.rope import TokenLayout, scail2_rope_multipliers, scail2_rope_tables
from backend.scail2.models.transformer_scail2 import SCAIL2Transformer, config_from_official
from backend.scail2.testing.tiny import TINY_CONFIGS


def _tiny_scail2() -> SCAIL2Transformer:
    torch.manual_seed(0)
    official = {k: v for k, v in TINY_CONFIGS["dit"].items() if k != "clip_dim"}
    return SCAIL2Transformer(**config_from_official(official, clip_dim=TINY_CONFIGS["dit"]["clip_dim"])).eval()


def _inputs(model: SCAIL2Transformer) -> dict:
    generator = torch.Generator().manual_seed(1)
    config = model.config
    frames, h, w = 2, 8, 12

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    return dict(
        latents=rand(1, 16, frames, h, w), timestep=torch.tensor([700.0]), context=rand(1, 5, config.text_dim),
        clip_features=rand(1, 257, config.clip_dim), ref_latents=rand(1, 16, 1, h, w),
        ref_masks=rand(1, config.mask_dim, 1, h, w), pose_latents=rand(1, 16, frames, h // 2, w // 2),
        driving_masks=rand(1, config.mask_dim, frames, h // 2, w // 2), return_dict=False,
    )


def test_rotary_table_equals_complex_multiplication():
    layout = TokenLayout(frames=2, height=4, width=6)
    cos, sin = scail2_rope_tables(32, layout, dtype=torch.float64)
    multipliers = scail2_rope_multipliers(32, layout)  # complex128, avg-pooled driving rows included
    x = torch.randn(1, layout.total_tokens, 2, 32, dtype=torch.float64)
    expected = torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * multipliers[None, :, None])
    assert torch.allclose(apply_rotary_table(x, cos, sin), expected.flatten(-2), atol=1e-12)


def test_strided_processor_matches_the_wan_processor_on_the_whole_model():
    model = _tiny_scail2()
    inputs = _inputs(model)
    with torch.no_grad():
        reference = model(**inputs)[0]
        assert use_strided_attention(model, backend="math") == 2 * model.config.num_layers
        assert isinstance(model.blocks[0].attn2.processor, StridedSDPAProcessor)
        out = model(**inputs)[0]
    assert torch.allclose(out, reference, rtol=1e-5, atol=1e-6), (out - reference).abs().max()


def test_strided_processor_compiles_as_one_graph():
    from backend.scail2.accel import compile_blocks

    model = _tiny_scail2()
    inputs = _inputs(model)
    with torch.no_grad():
        reference = model(**inputs)[0]
        use_strided_attention(model, backend="math")
        compile_blocks(model, backend="aot_eager")  # fullgraph: sdpa_kernel and the views trace cleanly
        out = model(**inputs)[0]
    assert torch.allclose(out, reference, rtol=1e-5, atol=1e-6)


def test_apply_performance_settings_converts_and_reports():
    from backend.scail2.accel import PerformanceSettings, apply_performance_settings

    model = _tiny_scail2().to(torch.bfloat16)
    inputs = _inputs(model)
    with torch.no_grad():
        reference = model(**inputs)[0]
        settings = PerformanceSettings.for_device("cpu", fp8_linear=True)
        state = apply_performance_settings(model, settings, "cpu")
        out = model(**inputs)[0]
    report = state.to_dict()
    assert report["fp8_linears"] == 8 * model.config.num_layers and report["compiled_blocks"] == 0
    assert report["attention_backend_resolved"] == "native" and report["fp8_linear"]
    error = float((out - reference).norm() / reference.norm())
    assert 1e-3 < error < 0.1, error
