"""Settings defaults per GPU class and attention backend selection (clean fallback on CPU)."""

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanTransformerBlock

from backend.scail2.accel import PerformanceSettings, select_attention_backend, set_attention_backend
from backend.scail2.accel.attention import preferred_backends, probe_backend


@pytest.mark.parametrize(
    ("gib", "low_vram", "vae_tiling", "offload_encoders"),
    [(22.0, True, True, True), (44.5, True, False, True), (79.2, False, False, True), (139.8, False, False, False)],
)
def test_defaults_follow_the_memory_class(gib, low_vram, vae_tiling, offload_encoders):
    settings = PerformanceSettings.for_memory(gib)
    assert (settings.low_vram, settings.vae_tiling, settings.offload_encoders) == (
        low_vram, vae_tiling, offload_encoders)
    assert settings.compile_blocks and not settings.fp8_linear and settings.attention_backend == "auto"


def test_overrides_and_validation():
    settings = PerformanceSettings.for_memory(79.2, fp8_linear=True, attention_backend="cudnn")
    assert settings.fp8_linear and settings.to_dict()["attention_backend"] == "cudnn"
    assert not PerformanceSettings.for_device("cpu").compile_blocks
    with pytest.raises(ValueError, match="attention_backend"):
        PerformanceSettings(attention_backend="fast")


def test_auto_backend_on_cpu_is_native_and_explicit_gpu_backends_fail_clearly():
    cpu = torch.device("cpu")
    assert preferred_backends(cpu) == ["native"]
    assert probe_backend("native", cpu, dtype=torch.float32)
    assert select_attention_backend("auto", cpu) == "native"
    with pytest.raises(RuntimeError, match="cudnn"):
        select_attention_backend("cudnn", cpu)
    with pytest.raises(ValueError, match="not one of"):
        select_attention_backend("xla", cpu)


def test_setting_the_backend_reaches_every_processor():
    block = WanTransformerBlock(dim=64, ffn_dim=128, num_heads=2, added_kv_proj_dim=64)
    assert set_attention_backend(block, "math") == 2
    assert {p._attention_backend.value for p in (block.attn1.processor, block.attn2.processor)} == {"_native_math"}


def test_cross_attention_can_take_its_own_backend():
    block = WanTransformerBlock(dim=64, ffn_dim=128, num_heads=2, added_kv_proj_dim=64)
    assert set_attention_backend(block, "native", cross_name="math") == 2
    assert block.attn1.processor._attention_backend.value == "native"
    assert block.attn2.processor._attention_backend.value == "_native_math"
    with pytest.raises(ValueError, match="cross_attention_backend"):
        PerformanceSettings(cross_attention_backend="fastest")
