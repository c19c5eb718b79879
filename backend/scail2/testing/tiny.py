"""Write a tiny, random, UNTRAINED SCAIL-2 checkpoint folder in the file formats users download.

    python -m backend.scail2.tiny DIR [--layout official|converted|comfy|diffusers-encoders] [--seed 0]

The folder has the real file names, key names and containers of each supported layout (see ``loaders/layout.py``) with
tiny dimensions (DiT dim 64, 2 layers, 2 heads; T5 dim 32; CLIP dim 32 at 224 px; VAE dim 8), so the whole
pipeline runs in seconds on a CPU. Its outputs are noise. The folder is marked untrained by a ``README.md`` and by
``scail2_config.json`` (``"untrained": true``), which also carries the tiny component configurations the loaders
read.

Layouts:

* ``official``: ``zai-org/SCAIL-2`` — SAT DiT under ``module`` in ``model/1/fsdp2_rank_0000_checkpoint.pt``, SAT
  DPO and relighting LoRAs under ``model/``, ``Wan2.1_VAE.pth``, ``umt5-xxl/`` (T5 ``.pth`` + a real tiny
  SentencePiece tokenizer), the open-clip ``...-onlyvisual.pth``; plus a lightx2v LoRA in ``loras/``.
* ``converted``: the DiT as ``SCAIL-2.safetensors`` in Wan key names (``convert.py`` output), LoRAs converted to
  the Wan ``lora_down``/``lora_up`` format in ``loras/``, official encoder files.
* ``comfy``: Comfy-Org names (``diffusion_models/wan2.1_14B_SCAIL_2_fp16.safetensors`` in fp16,
  ``loras/wan2.1_SCAIL_2_{DPO,relight}_lora_bf16.safetensors``) with Wan2.1-I2V diffusers encoder folders.
* ``diffusers-encoders``: the official SAT DiT and LoRAs with diffusers ``text_encoder/``, ``tokenizer/``,
  ``image_encoder/`` and ``vae/`` folders instead of the official encoder files.

The folder is built in a temporary sibling directory and renamed into place, so it is never left half written.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..loaders import dit_keys
from ..loaders.layout import CLIP_FILE, MODEL_CONFIG_FILE, SAT_DIT_FILE, T5_DIR, T5_FILE, VAE_FILE
from ..models.image_encoder import ClipVisionConfig, official_clip_shapes
from ..models.text_encoder import T5EncoderConfig, official_t5_shapes
from ..models.vae import WanVAEConfig, official_vae_shapes

__all__ = ["LAYOUTS", "TINY_CONFIGS", "main", "random_dit_inputs", "tiny_official_state_dicts", "write_tiny_checkpoint"]

LAYOUTS = ("official", "converted", "comfy", "diffusers-encoders")

# Official constructor argument names, as in tests/data/parity/pipeline/config.json.
TINY_CONFIGS: dict[str, dict] = {
    "dit": {
        "model_type": "i2v",
        "patch_size": [1, 2, 2],
        "text_len": 512,
        "in_dim": 20,
        "mask_dim": 28,
        "dim": 64,
        "ffn_dim": 128,
        "freq_dim": 32,
        "text_dim": 32,
        "out_dim": 16,
        "num_heads": 2,
        "num_layers": 2,
        "window_size": [-1, -1],
        "qk_norm": True,
        "cross_attn_norm": True,
        "eps": 1e-6,
        "clip_dim": 32,
    },
    "t5": {
        "vocab_size": 256,
        "dim": 32,
        "dim_attn": 32,
        "dim_ffn": 64,
        "num_heads": 2,
        "encoder_layers": 2,
        "num_buckets": 32,
        "shared_pos": False,
        "text_len": 512,
    },
    "clip": {
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
    },
    "vae": {
        "dim": 8,
        "z_dim": 16,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 1,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
    },
}

TOKENIZER_VOCAB_SIZE = 200  # <= the tiny T5 vocab (256)
LORA_RANK = 4
UNTRAINED_NOTE = (
    "UNTRAINED: tiny random weights written by `python -m backend.scail2.tiny` for tests. "
    "Its outputs are noise. It only has the file layout and key names of the real SCAIL-2 checkpoint."
)

# Prompts the tiny SentencePiece model is trained on (any small English corpus works).
_TOKENIZER_CORPUS = (
    "a woman in a red dress dances in a bright studio",
    "the character walks forward and waves with the right hand",
    "a man in a blue jacket jumps over a small wooden box",
    "an animated cat turns its head and smiles at the camera",
    "two people hold hands and spin around on green grass",
    "the robot raises both arms, then bows slowly",
    "soft warm light, shallow depth of field, cinematic motion",
    "a dancer in white clothes performs a spin on a dark stage",
    "the girl runs along the beach at sunset, hair blowing in the wind",
    "close-up of hands playing a piano, fingers moving quickly",
)


# --- random weights ----------------------------------------------------------------------------------------


def random_dit_inputs(text_dim: int, clip_dim: int, seed: int = 1, frames: int = 2, height: int = 8,
                      width: int = 4) -> dict[str, torch.Tensor]:
    """Seeded random keyword inputs for one SCAIL2Transformer forward: latents of ``frames`` x ``height`` x
    ``width``, half-resolution pose latents and masks, a 5-token text and 9-token image context."""
    g = torch.Generator().manual_seed(seed)
    return {
        "latents": torch.randn(1, 16, frames, height, width, generator=g),
        "timestep": torch.tensor([700.0]),
        "context": torch.randn(1, 5, text_dim, generator=g),
        "clip_features": torch.randn(1, 9, clip_dim, generator=g),
        "ref_latents": torch.randn(1, 16, 1, height, width, generator=g),
        "ref_masks": torch.rand(1, 28, 1, height, width, generator=g),
        "pose_latents": torch.randn(1, 16, frames, height // 2, width // 2, generator=g),
        "driving_masks": torch.rand(1, 28, frames, height // 2, width // 2, generator=g),
    }


def _init_tensor(key: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Random values of sensible scale so every stage of the tiny pipeline stays finite and non-trivial."""
    if len(shape) == 0:
        return torch.tensor(math.log(1 / 0.07))  # CLIP log_scale's official init
    noise = torch.randn(shape, generator=generator)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "bias" or key.endswith("diff_b"):
        return 0.1 * noise
    if leaf == "gamma" or (leaf == "weight" and len(shape) == 1):
        return 1 + 0.1 * noise
    if key.endswith("token_embedding.weight"):
        return noise
    if key.endswith("pos_embedding.embedding.weight"):
        return 0.5 * noise
    if "modulation" in key or key.endswith(("cls_embedding", "pos_embedding", "visual.head")):
        return noise / math.sqrt(shape[-1])
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return noise / math.sqrt(fan_in)


def _random_state(shapes: Mapping[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {key: _init_tensor(key, tuple(shapes[key]), generator).contiguous() for key in sorted(shapes)}


def tiny_official_state_dicts(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Random state dicts of the tiny components in their official key spaces: "dit" (Wan names), "t5", "clip",
    "vae"."""
    dit_args = TINY_CONFIGS["dit"]
    dit_shapes = dit_keys.official_wan_shapes(
        dim=dit_args["dim"],
        ffn_dim=dit_args["ffn_dim"],
        num_layers=dit_args["num_layers"],
        in_dim=dit_args["in_dim"],
        mask_dim=dit_args["mask_dim"],
        text_dim=dit_args["text_dim"],
        freq_dim=dit_args["freq_dim"],
        out_dim=dit_args["out_dim"],
        clip_dim=dit_args["clip_dim"],
        patch_size=tuple(dit_args["patch_size"]),
    )
    clip_config = ClipVisionConfig.from_official_args(TINY_CONFIGS["clip"])
    return {
        "dit": _random_state(dit_shapes, seed),
        "t5": _random_state(official_t5_shapes(T5EncoderConfig.from_official_args(TINY_CONFIGS["t5"])), seed + 1),
        "clip": _random_state(official_clip_shapes(clip_config, TINY_CONFIGS["clip"]["embed_dim"]), seed + 2),
        "vae": _random_state(official_vae_shapes(WanVAEConfig.from_official_args(TINY_CONFIGS["vae"])), seed + 3),
    }


# --- LoRAs -------------------------------------------------------------------------------------------------

# (SAT module path inside transformer.layers.N, [Wan module paths inside blocks.N]); several Wan modules mean
# the SAT LoRA holds one lora_layer.{i} per fused part.
_SAT_LORA_MODULES = (
    ("attention.query_key_value", ("self_attn.q", "self_attn.k", "self_attn.v")),
    ("attention.dense", ("self_attn.o",)),
    ("cross_attention.query", ("cross_attn.q",)),
    ("cross_attention.key_value", ("cross_attn.k", "cross_attn.v")),
    ("cross_attention.dense", ("cross_attn.o",)),
    ("mlp.dense_h_to_4h", ("ffn.0",)),
    ("mlp.dense_4h_to_h", ("ffn.2",)),
)
_LIGHTX2V_MODULES = (
    "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
    "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "cross_attn.k_img", "cross_attn.v_img",
    "ffn.0", "ffn.2",
)  # fmt: skip


def _lora_pair(out_features: int, in_features: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    down = torch.randn(LORA_RANK, in_features, generator=generator) / math.sqrt(in_features)
    up = 0.1 * torch.randn(out_features, LORA_RANK, generator=generator) / math.sqrt(LORA_RANK)
    return down, up


def tiny_sat_lora(dit_shapes: Mapping[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """A SAT-format LoRA (official DPO/relighting file layout): ``model.diffusion_model.transformer.layers.N.
    <module>.lora_layer[.i].{down,up}.weight``."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for n in range(TINY_CONFIGS["dit"]["num_layers"]):
        for sat_module, wan_modules in _SAT_LORA_MODULES:
            for part, wan_module in enumerate(wan_modules):
                out_features, in_features = dit_shapes[f"blocks.{n}.{wan_module}.weight"]
                down, up = _lora_pair(out_features, in_features, generator)
                layer = "lora_layer" if len(wan_modules) == 1 else f"lora_layer.{part}"
                base = f"model.diffusion_model.transformer.layers.{n}.{sat_module}.{layer}"
                state[f"{base}.down.weight"] = down
                state[f"{base}.up.weight"] = up
    return state


def sat_lora_to_wan(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official ``convert_lora.py`` result: ``diffusion_model.blocks.N.<module>.lora_{down,up}.weight``."""
    lookup = {
        (sat_module, part if len(wan_modules) > 1 else None): wan_module
        for sat_module, wan_modules in _SAT_LORA_MODULES
        for part, wan_module in enumerate(wan_modules)
    }
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        body = key.removeprefix("model.diffusion_model.transformer.layers.")
        block, rest = body.split(".", 1)
        module, _, tail = rest.partition(".lora_layer")
        parts = tail.strip(".").split(".")  # ["0", "down", "weight"] or ["down", "weight"]
        part = int(parts[0]) if len(parts) == 3 else None
        kind = "lora_down" if parts[-2] == "down" else "lora_up"
        converted[f"diffusion_model.blocks.{block}.{lookup[(module, part)]}.{kind}.weight"] = tensor
    return converted


def tiny_lightx2v_lora(dit_shapes: Mapping[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """A Kijai/lightx2v-format LoRA: ``diffusion_model.blocks.N.<module>.{lora_down.weight,lora_up.weight,diff_b}``."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for n in range(TINY_CONFIGS["dit"]["num_layers"]):
        for module in _LIGHTX2V_MODULES:
            out_features, in_features = dit_shapes[f"blocks.{n}.{module}.weight"]
            down, up = _lora_pair(out_features, in_features, generator)
            base = f"diffusion_model.blocks.{n}.{module}"
            state[f"{base}.lora_down.weight"] = down.to(torch.bfloat16)
            state[f"{base}.lora_up.weight"] = up.to(torch.bfloat16)
            state[f"{base}.diff_b"] = (0.01 * torch.randn(out_features, generator=generator)).to(torch.bfloat16)
    return state


# --- tokenizer ---------------------------------------------------------------------------------------------


def write_tiny_tokenizer(folder: Path) -> None:
    """Train a real tiny T5-style SentencePiece model (pad 0, eos 1, unk 2) and save it as umT5 tokenizer files:
    ``spiece.model`` plus the ``tokenizer.json``/``tokenizer_config.json`` transformers reads."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    model_bytes = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_TOKENIZER_CORPUS * 20),
        model_writer=model_bytes,
        vocab_size=TOKENIZER_VOCAB_SIZE,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        hard_vocab_limit=False,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    (folder / "spiece.model").write_bytes(model_bytes.getvalue())
    processor = spm.SentencePieceProcessor(model_proto=model_bytes.getvalue())
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    tokenizer.save_pretrained(str(folder))
    special = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=1))


# --- diffusers-format encoder folders ----------------------------------------------------------------------


def _write_diffusers_encoders(root: Path, seed: int) -> None:
    """Wan2.1-I2V-Diffusers-style ``text_encoder/`` (sharded), ``tokenizer/``, ``image_encoder/``, ``vae/``."""
    from diffusers import AutoencoderKLWan
    from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5EncoderModel

    t5_config = T5EncoderConfig.from_official_args(TINY_CONFIGS["t5"]).to_transformers()
    t5_config.architectures = ["UMT5EncoderModel"]
    torch.manual_seed(seed + 11)
    text_encoder = UMT5EncoderModel(t5_config)
    folder = root / "text_encoder"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(t5_config.to_json_string())
    state = {k: v.contiguous() for k, v in text_encoder.state_dict().items() if k != "encoder.embed_tokens.weight"}
    _write_sharded(folder, "model", state, shards=2)

    write_tiny_tokenizer(root / "tokenizer")

    clip = ClipVisionConfig.from_official_args(TINY_CONFIGS["clip"])
    clip_config = CLIPVisionConfig(
        hidden_size=clip.vision_dim,
        intermediate_size=clip.vision_dim * clip.vision_mlp_ratio,
        num_hidden_layers=clip.vision_layers,
        num_attention_heads=clip.vision_heads,
        image_size=clip.image_size,
        patch_size=clip.patch_size,
        hidden_act="gelu",
        layer_norm_eps=clip.norm_eps,
        projection_dim=TINY_CONFIGS["clip"]["embed_dim"],
    )
    clip_config.architectures = ["CLIPVisionModel"]
    torch.manual_seed(seed + 12)
    image_encoder = CLIPVisionModel(clip_config)
    folder = root / "image_encoder"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(clip_config.to_json_string())
    # The released folders were saved with the "vision_model." prefix.
    state = {
        (k if k.startswith("vision_model.") else f"vision_model.{k}"): v.contiguous()
        for k, v in image_encoder.state_dict().items()
    }
    save_file(state, str(folder / "model.safetensors"))

    torch.manual_seed(seed + 13)
    vae = AutoencoderKLWan(**WanVAEConfig.from_official_args(TINY_CONFIGS["vae"]).to_diffusers_kwargs())
    vae.save_pretrained(str(root / "vae"), safe_serialization=True)


def _write_sharded(folder: Path, stem: str, state: Mapping[str, torch.Tensor], shards: int) -> None:
    keys = sorted(state)
    weight_map: dict[str, str] = {}
    for index in range(shards):
        name = f"{stem}-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[index::shards]}
        save_file(part, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
    index_data = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                  "weight_map": weight_map}  # fmt: skip
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index_data, indent=1))


# --- the folder --------------------------------------------------------------------------------------------


def _write_official_encoders(root: Path, states: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    torch.save(dict(states["vae"]), root / VAE_FILE)
    torch.save(dict(states["clip"]), root / CLIP_FILE)
    (root / T5_DIR).mkdir()
    # The official T5 file is bf16.
    torch.save({k: v.to(torch.bfloat16) for k, v in states["t5"].items()}, root / T5_DIR / T5_FILE)
    write_tiny_tokenizer(root / T5_DIR)


def _write_sat_dit(root: Path, dit: Mapping[str, torch.Tensor]) -> None:
    iteration = root / "model" / "1"
    iteration.mkdir(parents=True)
    (root / "model" / "latest").write_text("1\n")
    torch.save({"module": dit_keys.wan_to_sat_state_dict(dit)}, iteration / SAT_DIT_FILE)


def _write_folder(root: Path, layout: str, seed: int, dit_prefix: str) -> None:
    states = tiny_official_state_dicts(seed)
    dit = states["dit"]
    dit_shapes = {k: tuple(v.shape) for k, v in dit.items()}
    dpo = tiny_sat_lora(dit_shapes, seed + 21)
    relight = tiny_sat_lora(dit_shapes, seed + 22)
    lightx2v = tiny_lightx2v_lora(dit_shapes, seed + 23)
    prefixed_dit = {dit_prefix + k: v for k, v in dit.items()}
    (root / "loras").mkdir()
    save_file(lightx2v, str(root / "loras" / "lightx2v_I2V_14B_480p_cfg_step_distill_rank4_bf16.safetensors"))

    if layout in ("official", "diffusers-encoders"):
        _write_sat_dit(root, dit)
        torch.save({"module": dpo}, root / "model" / "bias-aware-dpo-lora.pt")
        torch.save({"module": relight}, root / "model" / "relighting-lora.pt")
    elif layout == "converted":
        save_file(prefixed_dit, str(root / "SCAIL-2.safetensors"))
        save_file(sat_lora_to_wan(dpo), str(root / "loras" / "bias-aware-dpo-lora.safetensors"))
        save_file(sat_lora_to_wan(relight), str(root / "loras" / "relighting-lora.safetensors"))
    elif layout == "comfy":
        (root / "diffusion_models").mkdir()
        fp16 = {k: v.to(torch.float16) for k, v in prefixed_dit.items()}
        save_file(fp16, str(root / "diffusion_models" / "wan2.1_14B_SCAIL_2_fp16.safetensors"))
        for name, lora in (("DPO", dpo), ("relight", relight)):
            bf16 = {k: v.to(torch.bfloat16) for k, v in sat_lora_to_wan(lora).items()}
            save_file(bf16, str(root / "loras" / f"wan2.1_SCAIL_2_{name}_lora_bf16.safetensors"))

    if layout in ("official", "converted"):
        _write_official_encoders(root, states)
    else:
        _write_diffusers_encoders(root, seed)

    config = {"name": "tiny SCAIL-2 test checkpoint", "untrained": True, "note": UNTRAINED_NOTE, "layout": layout,
              "seed": seed, **TINY_CONFIGS}
    (root / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=1))
    (root / "README.md").write_text(f"# Tiny SCAIL-2 test checkpoint ({layout} layout)\n\n{UNTRAINED_NOTE}\n")


def write_tiny_checkpoint(
    directory: str | Path, layout: str = "official", seed: int = 0, *, dit_prefix: str = ""
) -> Path:
    """Write a tiny untrained checkpoint folder in ``layout`` (one of :data:`LAYOUTS`) to ``directory``.

    ``dit_prefix`` (``""``, ``"diffusion_model."`` or ``"model.diffusion_model."``) prefixes the keys of
    single-file DiTs (``converted``/``comfy``). ``directory`` must not exist or be empty. Returns its path.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {list(LAYOUTS)}")
    if dit_prefix not in dit_keys.KEY_PREFIXES + ("",):
        raise ValueError(f"dit_prefix must be one of {[''] + list(dit_keys.KEY_PREFIXES)}")
    directory = Path(directory).expanduser().absolute()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise FileExistsError(f"{directory} exists and is not an empty folder")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        _write_folder(staging, layout, seed, dit_prefix)
        if directory.exists():
            directory.rmdir()
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backend.scail2.tiny",
        description="Write a tiny random (UNTRAINED) SCAIL-2 checkpoint folder for tests.",
    )
    parser.add_argument("directory", type=Path, help="folder to create (must not exist or be empty)")
    parser.add_argument("--layout", choices=LAYOUTS, default="official")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dit-prefix", default="", help="key prefix of single-file DiTs (converted/comfy)")
    args = parser.parse_args(argv)
    try:
        path = write_tiny_checkpoint(args.directory, args.layout, args.seed, dit_prefix=args.dit_prefix)
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote tiny UNTRAINED {args.layout} checkpoint to {path}")
    return 0

