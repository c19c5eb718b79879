"""DiT parity: the shared golden fixture set, and a fixture set of another shape generated here.

The generated set proves that ``check_dit_fixture`` derives everything from the files (dims, heads, layers, CLIP
width and token count, latent size, number of additional references). Its expected outputs come from
``_official_forward`` below: a direct transcription of the official forward pass (Wan key names, float64 complex
RoPE, explicit attention) that shares no code with the engine and is itself checked against the golden fixtures.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from backend.scail2.errors import CheckpointError
from backend.scail2.loaders.dit_keys import official_wan_shapes
from backend.scail2.testing.parity_dit import check_dit_fixture

# --- an independent transcription of the official SCAIL2Model.forward ---------------------------------------


def _rope_axis(positions: torch.Tensor, pairs: int) -> torch.Tensor:
    inv = 1.0 / torch.pow(10000.0, torch.arange(0, 2 * pairs, 2, dtype=torch.float64) / (2 * pairs))
    angles = torch.outer(positions.double(), inv)
    return torch.polar(torch.ones_like(angles), angles)


def _rope_grid(head_dim, f, h, w, t0, h0, w0):
    c = head_dim // 2
    pt, ph, pw = c - 2 * (c // 3), c // 3, c // 3
    ft = _rope_axis(torch.arange(t0, t0 + f), pt)[:, None, None].expand(f, h, w, pt)
    fh = _rope_axis(torch.arange(h0, h0 + h), ph)[None, :, None].expand(f, h, w, ph)
    fw = _rope_axis(torch.arange(w0, w0 + w), pw)[None, None, :].expand(f, h, w, pw)
    return torch.cat([ft, fh, fw], dim=-1)


def _official_forward(sd, args, clip_dim, case, replace):
    dim, heads, eps = args["dim"], args["num_heads"], args["eps"]
    head_dim = dim // heads

    def lin(x, name):
        return F.linear(x, sd[name + ".weight"], sd[name + ".bias"])

    def conv(x, name):
        return F.conv3d(x, sd[name + ".weight"], sd[name + ".bias"], stride=(1, 2, 2))

    def flat(x):
        return x.flatten(2).transpose(1, 2)

    def with_channels(x, value):
        return torch.cat([x, torch.full((1, 4, *x.shape[2:]), value)], 1)

    x = case["x"][None]
    T, H, W = x.shape[2:]
    x = torch.cat([x, case["history_mask"][None]], 1) if "history_mask" in case else with_channels(x, 0.0)
    ref = with_channels(case["ref_latents"][None], 1.0)
    main = conv(torch.cat([ref, x], 2), "patch_embedding") + conv(
        case["ref_masks"][None], "patch_embedding_mask"
    )
    pose = conv(with_channels(case["pose_latents"][None], 1.0), "patch_embedding_pose")
    pose = pose + conv(case["driving_masks"][None], "patch_embedding_mask")
    sequence = [flat(main), flat(pose)]
    n_add = 0
    if "additional_ref_latents" in case:
        add = conv(with_channels(case["additional_ref_latents"][None], 1.0), "patch_embedding")
        add = add + conv(case["additional_ref_masks"][None], "patch_embedding_mask")
        sequence.insert(0, flat(add))
        n_add = case["additional_ref_latents"].shape[1]
    x = torch.cat(sequence, 1)

    half = args["freq_dim"] // 2
    sinusoid = torch.outer(
        case["t"].double(), torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
    )
    e = torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], 1).float()
    e = lin(F.silu(lin(e, "time_embedding.0")), "time_embedding.2")
    e0 = lin(F.silu(e), "time_projection.1").unflatten(1, (6, dim))

    text = torch.zeros(1, args["text_len"], args["text_dim"])
    text[0, : case["context"].shape[0]] = case["context"]
    text = lin(F.gelu(lin(text, "text_embedding.0"), approximate="tanh"), "text_embedding.2")
    clip = case["clip_fea"].reshape(1, -1, clip_dim)
    img = F.layer_norm(clip, (clip_dim,), sd["img_emb.proj.0.weight"], sd["img_emb.proj.0.bias"])
    img = lin(F.gelu(lin(img, "img_emb.proj.1")), "img_emb.proj.3")
    img = F.layer_norm(img, (dim,), sd["img_emb.proj.4.weight"], sd["img_emb.proj.4.bias"])
    context = torch.cat([img, text], 1)

    h, w = H // 2, W // 2
    shift_h = 120 if replace else 0
    t_video = n_add + (0 if replace else 1)
    grids = []
    if n_add:
        grids.append(_rope_grid(head_dim, n_add, h, w, 0, shift_h, 0))
    grids.append(_rope_grid(head_dim, 1, h, w, n_add, shift_h, 0))
    grids.append(_rope_grid(head_dim, T, h, w, t_video, 0, 0))
    pose_grid = _rope_grid(head_dim, T, h, w, t_video, 0, 120)
    grids.append(pose_grid.reshape(T, h // 2, 2, w // 2, 2, -1).mean(dim=(2, 4)))
    freqs = torch.cat([g.reshape(-1, g.shape[-1]) for g in grids])
    seq = x.shape[1]
    assert freqs.shape[0] == seq

    def rope(q):
        qc = torch.view_as_complex(q.double().reshape(1, seq, heads, -1, 2))
        return torch.view_as_real(qc * freqs[None, :, None]).flatten(3).float()

    def rms(v, weight):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps) * weight

    def attend(q, k, v):
        q, k, v = (
            u.unflatten(2, (heads, head_dim)).transpose(1, 2) if u.ndim == 3 else u.transpose(1, 2)
            for u in (q, k, v)
        )
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)

    text_rows = args["text_len"]
    for n in range(args["num_layers"]):
        p = f"blocks.{n}."
        m = (sd[p + "modulation"] + e0).chunk(6, 1)
        y = F.layer_norm(x, (dim,), eps=eps) * (1 + m[1]) + m[0]
        q = rope(
            rms(lin(y, p + "self_attn.q"), sd[p + "self_attn.norm_q.weight"]).unflatten(2, (heads, head_dim))
        )
        k = rope(
            rms(lin(y, p + "self_attn.k"), sd[p + "self_attn.norm_k.weight"]).unflatten(2, (heads, head_dim))
        )
        v = lin(y, p + "self_attn.v").unflatten(2, (heads, head_dim))
        x = x + lin(attend(q, k, v), p + "self_attn.o") * m[2]
        y = F.layer_norm(x, (dim,), sd[p + "norm3.weight"], sd[p + "norm3.bias"], eps)
        image_ctx, text_ctx = context[:, :-text_rows], context[:, -text_rows:]
        q = rms(lin(y, p + "cross_attn.q"), sd[p + "cross_attn.norm_q.weight"])
        k = rms(lin(text_ctx, p + "cross_attn.k"), sd[p + "cross_attn.norm_k.weight"])
        k_img = rms(lin(image_ctx, p + "cross_attn.k_img"), sd[p + "cross_attn.norm_k_img.weight"])
        out = attend(q, k, lin(text_ctx, p + "cross_attn.v")) + attend(
            q, k_img, lin(image_ctx, p + "cross_attn.v_img")
        )
        x = x + lin(out, p + "cross_attn.o")
        y = F.layer_norm(x, (dim,), eps=eps) * (1 + m[4]) + m[3]
        x = x + lin(F.gelu(lin(y, p + "ffn.0"), approximate="tanh"), p + "ffn.2") * m[5]

    hm = (sd["head.modulation"] + e[:, None]).chunk(2, 1)
    out = lin(F.layer_norm(x, (dim,), eps=eps) * (1 + hm[1]) + hm[0], "head.head")
    offset = (n_add + 1) * h * w
    video = out[0, offset : offset + T * h * w].reshape(T, h, w, 1, 2, 2, -1)
    return torch.einsum("fhwpqrc->cfphqwr", video).reshape(-1, T, H, W)


# --- helpers --------------------------------------------------------------------------------------------------


def _generate_fixture_set(directory: Path, args: dict, clip_dim: int, clip_tokens: int, latent, n_refs: int):
    """Write a dit fixture set (config.json, state_dict.safetensors, case files) with a random config."""
    directory.mkdir(parents=True)
    g = torch.Generator().manual_seed(7)
    shapes = official_wan_shapes(
        dim=args["dim"],
        ffn_dim=args["ffn_dim"],
        num_layers=args["num_layers"],
        text_dim=args["text_dim"],
        freq_dim=args["freq_dim"],
        clip_dim=clip_dim,
    )
    sd = {}
    for key, shape in sorted(shapes.items()):
        if key.endswith("bias"):
            sd[key] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            sd[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            sd[key] = torch.randn(shape, generator=g) / torch.Size(shape[1:]).numel() ** 0.5
    save_file(sd, str(directory / "state_dict.safetensors"))

    T, H, W = latent
    cases = {}
    for name, replace, history_t, n_add, t in (
        ("animation", False, 0, 0, 901),
        ("replacement_history_refs", True, 1, n_refs, 77),
        ("refs", False, 0, n_refs, 400),
    ):
        case = {
            "x": torch.randn(16, T, H, W, generator=g),
            "ref_latents": torch.randn(16, 1, H, W, generator=g),
            "ref_masks": torch.cat([torch.rand(28, 1, H, W, generator=g), torch.zeros(28, T, H, W)], 1),
            "pose_latents": torch.randn(16, T, H // 2, W // 2, generator=g),
            "driving_masks": torch.rand(28, T, H // 2, W // 2, generator=g),
            "t": torch.tensor([t]),
            "context": torch.randn(6, args["text_dim"], generator=g),
            "clip_fea": torch.randn(1, clip_tokens, clip_dim, generator=g),
        }
        if history_t:
            case["history_mask"] = torch.zeros(4, T, H, W)
            case["history_mask"][:, :history_t] = 1
        if n_add:
            case["additional_ref_latents"] = torch.randn(16, n_add, H, W, generator=g)
            case["additional_ref_masks"] = torch.rand(28, n_add, H, W, generator=g)
        with torch.no_grad():
            case["output"] = _official_forward(sd, args, clip_dim, case, replace)
        file_name = f"case_{name}.safetensors"
        save_file(case, str(directory / file_name))
        cases[name] = {"replace_flag": replace, "file": file_name}
    config = {"constructor_args": args, "clip_dim": clip_dim, "cases": cases}
    (directory / "config.json").write_text(json.dumps(config, indent=1))


PERTURBED_ARGS = {
    "model_type": "i2v",
    "patch_size": [1, 2, 2],
    "text_len": 512,
    "in_dim": 20,
    "mask_dim": 28,
    "dim": 48,
    "ffn_dim": 80,
    "freq_dim": 16,
    "text_dim": 24,
    "out_dim": 16,
    "num_heads": 3,
    "num_layers": 3,
    "window_size": [-1, -1],
    "qk_norm": True,
    "cross_attn_norm": True,
    "pose_rope_shift": [0, 0, 120],
    "eps": 1e-6,
}


@pytest.fixture(scope="module")
def perturbed_set(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("parity") / "dit_perturbed"
    _generate_fixture_set(directory, PERTURBED_ARGS, clip_dim=20, clip_tokens=11, latent=(2, 8, 16), n_refs=3)
    return directory


# --- tests ----------------------------------------------------------------------------------------------------


def test_shared_dit_fixture_passes(parity_root):
    fixture = parity_root / "dit"
    records = check_dit_fixture(fixture)
    config = json.loads((fixture / "config.json").read_text())
    assert [r["case"] for r in records] == list(config["cases"])
    for record in records:
        assert record["set"] == "dit" and record["tol"] == 1e-4
        assert record["ok"], record
        assert record["max_rel_err"] < 1e-5, record


def test_transcription_of_the_official_forward_matches_the_fixture(parity_root):
    fixture = parity_root / "dit"
    """The oracle used for the generated set reproduces the golden outputs (so it is trustworthy)."""
    config = json.loads((fixture / "config.json").read_text())
    sd = load_file(str(fixture / "state_dict.safetensors"))
    for case in config["cases"].values():
        tensors = load_file(str(fixture / case["file"]))
        with torch.no_grad():
            out = _official_forward(
                sd, config["constructor_args"], config["clip_dim"], tensors, case["replace_flag"]
            )
        expected = tensors["output"]
        assert (out - expected).abs().max() / max(1.0, expected.abs().max()) < 1e-5


def test_generated_fixture_of_another_shape_passes(perturbed_set):
    records = check_dit_fixture(perturbed_set)
    assert [r["case"] for r in records] == ["animation", "replacement_history_refs", "refs"]
    assert all(r["set"] == "dit_perturbed" and r["ok"] for r in records), records
    assert max(r["max_rel_err"] for r in records) < 1e-5


def test_wrong_weights_are_detected(perturbed_set, tmp_path):
    broken = tmp_path / "dit_broken"
    shutil.copytree(perturbed_set, broken)
    sd = load_file(str(broken / "state_dict.safetensors"))
    sd["blocks.1.self_attn.norm_k.weight"] = sd["blocks.1.self_attn.norm_k.weight"] * 1.05
    save_file(sd, str(broken / "state_dict.safetensors"))
    records = check_dit_fixture(broken)
    assert not any(r["ok"] for r in records), records


def test_broken_fixture_files_fail_clearly(perturbed_set, tmp_path):
    broken = tmp_path / "dit_truncated"
    shutil.copytree(perturbed_set, broken)
    weights = broken / "state_dict.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="state_dict.safetensors"):
        check_dit_fixture(broken)

    mismatched = tmp_path / "dit_mismatched"
    shutil.copytree(perturbed_set, mismatched)
    config = json.loads((mismatched / "config.json").read_text())
    config["constructor_args"]["ffn_dim"] = 96
    (mismatched / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"ffn\.0\.weight: expected \[96"):
        check_dit_fixture(mismatched)

    config["constructor_args"]["window_size"] = [4, 4]
    (mismatched / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="window_size"):
        check_dit_fixture(mismatched)

    missing_case = tmp_path / "dit_missing_case"
    shutil.copytree(perturbed_set, missing_case)
    (missing_case / "case_refs.safetensors").unlink()
    with pytest.raises(CheckpointError, match="case_refs.safetensors"):
        check_dit_fixture(missing_case)
