"""Write SCAIL-2 Nano's folders: the frozen random encoders before training, the shipped checkpoint after it.

    python -m training.nano_checkpoint encoders ENC --seed 0
    python -m training.nano_checkpoint export models/scail2-nano --encoders ENC --vae RUN/vae --ema RUN/ema \\
        --readme MODEL_CARD.md

``encoders`` writes ``text_encoder/`` (umT5, transformers format), ``tokenizer/`` (a small SentencePiece model)
and ``image_encoder/`` (CLIP vision tower) with random weights from ``--seed``. Training reads them through the
engine's loaders, and ``export`` copies them unchanged, so the shipped model is conditioned exactly as it was
trained.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from backend.scail2.models.image_encoder import ClipVisionConfig
from backend.scail2.models.text_encoder import T5EncoderConfig
from backend.scail2.testing.tiny import write_tiny_tokenizer

from .nano_config import CLIP_CONFIG, T5_CONFIG


def write_encoders(folder: Path, seed: int) -> Path:
    """Random umT5 and CLIP encoders plus a tokenizer in the diffusers/transformers folder format."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5EncoderModel

    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} exists; remove it or choose another folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        t5_config = T5EncoderConfig.from_official_args(T5_CONFIG).to_transformers()
        t5_config.architectures = ["UMT5EncoderModel"]
        torch.manual_seed(seed)
        text_encoder = UMT5EncoderModel(t5_config)
        (staging / "text_encoder").mkdir()
        (staging / "text_encoder" / "config.json").write_text(t5_config.to_json_string())
        state = {k: v.contiguous() for k, v in text_encoder.state_dict().items() if k != "encoder.embed_tokens.weight"}
        save_file(state, str(staging / "text_encoder" / "model.safetensors"))

        write_tiny_tokenizer(staging / "tokenizer")

        clip = ClipVisionConfig.from_official_args(CLIP_CONFIG)
        clip_config = CLIPVisionConfig(
            hidden_size=clip.vision_dim,
            intermediate_size=clip.vision_dim * clip.vision_mlp_ratio,
            num_hidden_layers=clip.vision_layers,
            num_attention_heads=clip.vision_heads,
            image_size=clip.image_size,
            patch_size=clip.patch_size,
            hidden_act="gelu",
            layer_norm_eps=clip.norm_eps,
            projection_dim=CLIP_CONFIG["embed_dim"],
        )
        clip_config.architectures = ["CLIPVisionModel"]
        torch.manual_seed(seed + 1)
        image_encoder = CLIPVisionModel(clip_config)
        (staging / "image_encoder").mkdir()
        (staging / "image_encoder" / "config.json").write_text(clip_config.to_json_string())
        state = {(k if k.startswith("vision_model.") else f"vision_model.{k}"): v.contiguous()
                 for k, v in image_encoder.state_dict().items()}  # fmt: skip
        save_file(state, str(staging / "image_encoder" / "model.safetensors"))
        staging.chmod(0o755)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


DIT_FILE = "diffusion_models/scail2_nano.safetensors"
MODEL_NAME = "SCAIL-2 Nano (demo model)"
MODEL_NOTE = (
    "A 5.8 M-parameter SCAIL-2 trained on procedural motion pairs (training/, docs/NANO.md) at 128x128 in windows "
    "of 33 frames. It demonstrates the pipeline; it is not SCAIL-2's quality and knows nothing of real footage."
)


def export_checkpoint(folder: Path, *, encoders: Path, vae: Path, dit_weights: dict[str, torch.Tensor],
                      readme: str) -> Path:  # fmt: skip
    """Write the shipped folder: the DiT (Wan key names, fp16) under ``diffusion_models/``, the VAE as a
    diffusers ``vae/`` folder (fp16), the frozen encoders as trained with, ``scail2_config.json`` (the DiT's
    config, the model's name and note) and ``README.md``. Built beside ``folder`` and renamed into place."""
    import json

    from diffusers import AutoencoderKLWan

    from backend.scail2.loaders.dit_keys import internal_to_wan_state_dict
    from backend.scail2.loaders.layout import MODEL_CONFIG_FILE

    from .nano_config import DIT_CONFIG

    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} exists; remove it or choose another folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for name in ("text_encoder", "tokenizer", "image_encoder"):
            shutil.copytree(Path(encoders) / name, staging / name)
        AutoencoderKLWan.from_pretrained(str(vae), torch_dtype=torch.float16).save_pretrained(str(staging / "vae"))
        dit = {k: v.to(torch.float16).contiguous() for k, v in internal_to_wan_state_dict(dit_weights).items()}
        (staging / DIT_FILE).parent.mkdir()
        save_file(dit, str(staging / DIT_FILE), metadata={"model": MODEL_NAME})
        config = {"name": MODEL_NAME, "untrained": False, "note": MODEL_NOTE, "dit": DIT_CONFIG}
        (staging / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
        (staging / "README.md").write_text(readme)
        for path in staging.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)  # safetensors writes private files; these ship
        staging.chmod(0o755)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.nano_checkpoint", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    encoders = commands.add_parser("encoders", help="write the frozen random encoders")
    encoders.add_argument("folder", type=Path)
    encoders.add_argument("--seed", type=int, default=0)
    export = commands.add_parser("export", help="write the shipped checkpoint folder from a training run")
    export.add_argument("folder", type=Path)
    export.add_argument("--encoders", type=Path, required=True, help="the encoders folder trained with")
    export.add_argument("--vae", type=Path, required=True, help="the run's vae/ folder")
    export.add_argument("--ema", type=Path, required=True, help="stem of the run's EMA weights (RUN/ema)")
    export.add_argument("--readme", type=Path, required=True, help="the model card to ship as README.md")
    args = parser.parse_args(argv)
    try:
        if args.command == "encoders":
            print(f"wrote {write_encoders(args.folder, args.seed)}")
        else:
            from .train_nano import load_sharded

            folder = export_checkpoint(args.folder, encoders=args.encoders, vae=args.vae,
                                       dit_weights=load_sharded(args.ema), readme=args.readme.read_text())
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            print(f"wrote {folder} ({size / 2**20:.1f} MiB)")
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
