"""Train SCAIL-2 Nano within a wall-clock budget: the VAE first (unless one is given), then the DiT.

    python -m training.train_nano --encoders ENC --out OUT --seconds 560 --vae-seconds 170 --seed 0 \
        --render-device cpu --encode-on main --keep-vae-chunks 600      # docs/NANO.md has the planned run
    python -m training.train_nano --encoders ENC --out OUT2 --seconds 420 --vae OUT/vae \\
        --dit OUT/dit --ema OUT/ema --seed 1                     # continue the DiT (fresh optimizer, warm-up)

``ENC`` holds the frozen random text and image encoders (``python -m training.nano_checkpoint encoders ENC``),
so the ones trained with are the ones shipped. The run stops itself ``--margin`` seconds before its budget.
``OUT`` receives (overwritten at every checkpoint, at most 8 files): ``vae/config.json``,
``vae/diffusion_pytorch_model.safetensors``, ``dit-1.safetensors``/``dit-2.safetensors`` (fp32 weights),
``ema-1.safetensors``/``ema-2.safetensors`` (fp32 EMA weights), ``log.json`` (every logged row, settings,
timings, the held-out check) and ``preview.png`` (reference, driving, result, target for a few held-out pairs).
The last lines printed are a loss table and the held-out IoU of the EMA weights.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import load_file, save_file

from backend.scail2.models.image_encoder import ClipImageEncoder
from backend.scail2.models.text_encoder import UMT5TextEncoder
from backend.scail2.models.vae import WanVideoVAE

from . import nano_config
from .nano_data import ChunkFeeder, PairStream, WindowBuffer, encode_window
from .train_dit import DitTrainer, PromptBank, build_dit, train_dit
from .train_vae import build_vae, latent_statistics, set_latent_statistics, train_vae

SHARD_BYTES = 14 * 2**20  # files coming back from the GPU machine must stay under 16 MiB


def save_sharded(state: dict[str, torch.Tensor], stem: Path, shards: int = 2) -> list[Path]:
    """``stem-1.safetensors`` ... written atomically, split by size into ``shards`` files."""
    names = sorted(state)
    total = sum(state[n].numel() * state[n].element_size() for n in names)
    per_shard = total / shards
    groups: list[list[str]] = [[] for _ in range(shards)]
    running = 0
    for name in names:
        groups[min(shards - 1, int(running // per_shard))].append(name)
        running += state[name].numel() * state[name].element_size()
    paths = []
    for index, group in enumerate(groups, start=1):
        path = stem.parent / f"{stem.name}-{index}.safetensors"
        temporary = path.with_suffix(".tmp")
        save_file({n: state[n].contiguous() for n in group}, str(temporary))
        os.replace(temporary, path)
        paths.append(path)
    return paths


def load_sharded(stem: Path) -> dict[str, torch.Tensor]:
    files = sorted(stem.parent.glob(f"{stem.name}-*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no {stem.name}-*.safetensors in {stem.parent}")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(load_file(str(path)))
    return state


def loss_table(rows: list[dict], every: int = 1) -> str:
    lines = [f"{'stage':<5} {'step':>6} {'time':>7}  metrics"]
    for row in rows[::every] + ([rows[-1]] if rows and (len(rows) - 1) % every else []):
        metrics = "  ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("stage", "step", "time")
                            and isinstance(v, float))  # fmt: skip
        lines.append(f"{row['stage']:<5} {row['step']:>6} {row['time']:>7.1f}  {metrics}")
    return "\n".join(lines)


def heldout_check(dit, text_encoder, image_encoder, vae, device: torch.device, pairs: int, frames: int,
                  out: Path) -> dict:  # fmt: skip
    """Generate ``pairs`` held-out animation pairs through the real pipeline and score them (+ a preview)."""
    from PIL import Image

    from backend.scail2 import SamplingSettings
    from backend.scail2.pipelines.pipeline_scail2 import Scail2Pipeline

    from .evaluation import pipeline_generator, score_clip, summarize
    from .pairs import heldout_pairs

    pipe = Scail2Pipeline(dit.eval(), text_encoder, image_encoder, vae, device=device, offload_encoders=False)
    preset = nano_config.PRESETS["fast"]
    sampling = SamplingSettings(**{k: v for k, v in preset.items() if k != "loras"}, seed=0)
    generate = pipeline_generator(pipe, sampling=sampling, segment_len=nano_config.SEGMENT_LEN,
                                  segment_overlap=nano_config.SEGMENT_OVERLAP, prompt="")  # fmt: skip
    batch = heldout_pairs("animation", pairs, size=(nano_config.HEIGHT, nano_config.WIDTH), frames=frames)
    scores, rows = [], []
    for index in range(len(batch)):
        frames_u8 = generate(batch, index)
        scores.append(score_clip(frames_u8, batch, index))
        if index < 4:
            picks = np.linspace(0, batch.frames - 1, 4).round().astype(int)
            to_u8 = lambda x: (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()  # noqa: E731
            row = [to_u8(batch.reference[index])]
            row += [to_u8(batch.driving[index, t]) for t in picks]
            row += [frames_u8[t] for t in picks]
            row += [to_u8(batch.target[index, t]) for t in picks]
            rows.append(np.concatenate(row, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(out / "preview.png")
    dit.train()
    return summarize(scores)


@torch.no_grad()
def vae_round_trip(vae: WanVideoVAE, pairs: int, frames: int) -> dict:
    """Score the VAE alone: held-out animation targets encoded and decoded, as if a DiT had predicted their exact
    latents. Its IoU bounds what the whole model can reach; check it before spending time on the DiT."""
    from .evaluation import score_clip, summarize
    from .pairs import heldout_pairs

    batch = heldout_pairs("animation", pairs, size=(nano_config.HEIGHT, nano_config.WIDTH), frames=frames)
    scores, psnr = [], []
    for index in range(len(batch)):
        target = batch.target[index].to(vae.device)
        decoded = (vae.decode(vae.encode(target.transpose(0, 1) * 2 - 1)).transpose(0, 1) + 1) / 2
        psnr.append(float(-10 * torch.log10((decoded - target).pow(2).mean())))
        scores.append(score_clip(decoded.cpu(), batch, index))
    return {**summarize(scores), "psnr": sum(psnr) / len(psnr)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.train_nano", description=__doc__.split("\n")[0])
    parser.add_argument("--encoders", type=Path, required=True, help="folder with text_encoder/, tokenizer/, "
                        "image_encoder/ (python -m training.nano_checkpoint encoders)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, required=True, help="wall-clock budget of the whole run")
    parser.add_argument("--margin", type=float, default=30.0, help="stop this long before the budget")
    parser.add_argument("--vae-seconds", type=float, default=170.0)
    parser.add_argument("--vae", type=Path, help="a trained VAE folder, diffusers format (skips the VAE stage)")
    parser.add_argument("--vae-init", type=Path, help="continue training the VAE from this folder")
    parser.add_argument("--prefill-windows", type=int, default=0,
                        help="encode this many windows before the DiT trains, then pause the workers (0: keep "
                        "streaming while training, which slows training down on a shared GPU)")
    parser.add_argument("--prefill-seconds", type=float, default=40.0, help="at most this long for --prefill-windows")
    parser.add_argument("--refresh-every", type=float, default=0.0,
                        help="with --prefill-windows: every this many seconds, let the workers add windows for "
                        "--refresh-seconds (0: train on the prefilled windows only)")
    parser.add_argument("--refresh-seconds", type=float, default=8.0)
    parser.add_argument("--encode-on", choices=("workers", "main"), default="workers",
                        help="who VAE-encodes the DiT's windows: the pair workers, or the training process (with "
                        "--render-device cpu the workers then never touch the GPU and keep streaming fresh pairs "
                        "while the DiT trains)")
    parser.add_argument("--keep-vae-chunks", type=int, default=0,
                        help="with --encode-on main: keep up to this many of the chunks the VAE trained on and "
                        "encode them as the DiT's first windows")
    parser.add_argument("--dit", type=Path, help="continue from these DiT weights (stem of -N.safetensors)")
    parser.add_argument("--ema", type=Path, help="EMA weights to continue from (stem of -N.safetensors)")
    parser.add_argument("--seed", type=int, default=0, help="run seed: data chunks, noise, initialisation")
    parser.add_argument("--first-chunk", type=int, default=0, help="first data chunk (continue a run's stream)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--render-device", default=None, help="where workers rasterise pairs (default: --device)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 4))
    parser.add_argument("--chunk", type=int, default=16, help="pairs per streamed chunk")
    parser.add_argument("--frames", type=int, default=nano_config.SEGMENT_LEN)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--buffer", type=int, default=4096, help="encoded windows kept per setting")
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--decay-fraction", type=float, default=0.3,
                        help="the DiT learning rate decays to 20%% over this last fraction of its time (0: none)")
    parser.add_argument("--checkpoint-every", type=float, default=120.0)
    parser.add_argument("--eval-pairs", type=int, default=8)
    parser.add_argument("--eval-seconds-per-pair", type=float, default=None,
                        help="time kept for the final held-out check (default 8 s per pair on CUDA, 120 on CPU)")
    parser.add_argument("--log-every", type=int, default=50, help="DiT steps per logged row")
    args = parser.parse_args(argv)
    if args.eval_seconds_per_pair is None:
        args.eval_seconds_per_pair = 8.0 if str(args.device).startswith("cuda") else 120.0
    started = time.monotonic()
    deadline = started + args.seconds - args.margin
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)
    if args.vae is None and (args.out / "vae").exists():
        parser.error(f"{args.out / 'vae'} exists: pass it as --vae to reuse it, or choose an empty --out")
    rows: list[dict] = []
    record: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "stages": {}}
    if device.type == "cuda":
        record["device"] = torch.cuda.get_device_name(device)

    def log(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    def write_record() -> None:
        temporary = args.out / "log.json.tmp"
        temporary.write_text(json.dumps(record, indent=1))
        os.replace(temporary, args.out / "log.json")

    text_encoder = UMT5TextEncoder.from_diffusers(args.encoders / "text_encoder", args.encoders / "tokenizer",
                                                  dtype=torch.float32, device=device)  # fmt: skip
    image_encoder = ClipImageEncoder.from_diffusers(args.encoders / "image_encoder", dtype=torch.float32,
                                                    device=device)  # fmt: skip
    vae_dir = args.vae or args.out / "vae"
    stream = PairStream(args.seed, chunk_size=args.chunk, size=(nano_config.HEIGHT, nano_config.WIDTH),
                        frames=args.frames, render_device=args.render_device or args.device,
                        encoders=args.encoders, vae_dir=vae_dir, first_chunk=args.first_chunk,
                        encode=args.encode_on == "workers")  # fmt: skip
    feeder = ChunkFeeder(stream, args.workers)
    kept: list[dict] = []
    try:
        if args.vae is not None:
            vae_model = AutoencoderKLWan.from_pretrained(str(args.vae)).to(device)
        else:
            vae_model = AutoencoderKLWan.from_pretrained(str(args.vae_init)) if args.vae_init else build_vae()
            seconds = min(args.vae_seconds, deadline - time.monotonic() - 60)
            keep_limit = args.keep_vae_chunks if args.encode_on == "main" else 0
            record["stages"]["vae"] = train_vae(vae_model, feeder, device=device, seconds=seconds,
                                                batch=args.vae_batch, seed=args.seed, log=log, keep=kept,
                                                keep_limit=keep_limit)  # fmt: skip
            # The checkpoint stores the VAE in fp16: round now so the DiT trains on the latents it will ship with.
            with torch.no_grad():
                for parameter in vae_model.parameters():
                    parameter.copy_(parameter.half().float())
            mean, std = latent_statistics(vae_model, feeder, device=device, seed=args.seed)
            set_latent_statistics(vae_model, mean, std)
            # Written beside and renamed: the workers start encoding windows as soon as the folder exists.
            staging = args.out / ".vae.tmp"
            vae_model.save_pretrained(str(staging))
            os.replace(staging, vae_dir)
            record["stages"]["vae"].update({"latents_mean": mean, "latents_std": std})
        vae = WanVideoVAE(vae_model.to(device))
        if args.eval_pairs > 0:
            record["vae_round_trip"] = check = vae_round_trip(vae, args.eval_pairs, args.frames)
            print(f"VAE round trip, held-out animation ({check['pairs']} pairs): IoU {check['iou']:.3f}, "
                  f"PSNR {check['psnr']:.1f} dB, colour dE {check['colour_delta_e']:.1f}", flush=True)
        write_record()

        dit = build_dit()
        if args.dit is not None:
            dit.load_state_dict(load_sharded(args.dit))
        ema = load_sharded(args.ema) if args.ema is not None else None
        trainer_options = {}
        if args.learning_rate is not None:
            trainer_options["learning_rate"] = args.learning_rate
        if args.warmup is not None:
            trainer_options["warmup_steps"] = args.warmup
        trainer = DitTrainer(dit, device, ema=ema, **trainer_options)
        prompts = PromptBank(text_encoder, device)
        buffer = WindowBuffer(args.buffer, device)

        def add(chunks: list[dict]) -> int:
            added = 0
            for chunk in chunks:
                window = chunk.get("window")
                if window is None and args.encode_on == "main":
                    window = encode_window(chunk, chunk["setting"].split("-")[0], vae, image_encoder, device)
                if window is not None:  # with --encode-on workers, frame chunks made before the VAE are dropped
                    buffer.add(chunk["setting"], {k: v.to(device) for k, v in window.items()})
                    added += window["x0"].shape[0]
            return added

        if kept:
            kept_started = time.monotonic()
            while kept:
                add([kept.pop()])
            record["stages"]["kept_vae_chunks"] = {"windows": buffer.added,
                                                   "seconds": round(time.monotonic() - kept_started, 1)}
            print(f"encoded {buffer.added} windows the VAE trained on", flush=True)

        last_refresh = [time.monotonic()]

        def refill() -> int:
            if args.encode_on == "main":
                return add(feeder.take(2))
            if not args.prefill_windows:
                return add(feeder.take(64))
            if args.refresh_every and time.monotonic() - last_refresh[0] > args.refresh_every:
                added = add(feeder.burst(args.refresh_seconds, 256))
                last_refresh[0] = time.monotonic()
                return added
            return 0

        prefill_until = time.monotonic() + args.prefill_seconds
        while buffer.added < max(4 * args.chunk, args.prefill_windows):
            add([feeder.wait()])
            if args.prefill_windows and time.monotonic() > prefill_until:
                break
        if args.prefill_windows and args.encode_on == "workers":
            feeder.pause()
            last_refresh[0] = time.monotonic()
        record["stages"]["prefill"] = {"windows": buffer.added, "seconds": round(time.monotonic() - started)}

        def checkpoint() -> None:
            save_sharded(trainer.model_state(), args.out / "dit")
            save_sharded(trainer.ema_state(), args.out / "ema")
            record["stages"]["dit_checkpoint"] = {"step": trainer.step, "time": round(time.monotonic() - started)}
            write_record()

        eval_seconds = args.eval_seconds_per_pair * args.eval_pairs
        seconds = deadline - time.monotonic() - eval_seconds - 10
        record["stages"]["dit"] = train_dit(trainer, buffer, prompts, refill, seconds=seconds, batch=args.batch,
                                            seed=args.seed, log=log, checkpoint=checkpoint,
                                            checkpoint_every=args.checkpoint_every,
                                            decay_fraction=args.decay_fraction, log_every=args.log_every)  # fmt: skip
        record["stages"]["dit"]["feeder_chunks"] = feeder.produced
        checkpoint()
    finally:
        feeder.close()

    if args.eval_pairs > 0:
        ema_dit = build_dit()
        ema_dit.load_state_dict(trainer.ema_state())
        ema_dit.to(device).requires_grad_(False)
        check = heldout_check(ema_dit, text_encoder, image_encoder, vae, device, args.eval_pairs, args.frames,
                              args.out)  # fmt: skip
        record["heldout_check"] = check
    record["wall_seconds"] = round(time.monotonic() - started, 1)
    write_record()
    print(loss_table(rows, every=max(1, len(rows) // 24)))
    if "vae_round_trip" in record:
        check = record["vae_round_trip"]
        print(f"VAE round trip: IoU {check['iou']:.3f}, PSNR {check['psnr']:.1f} dB")
    if "heldout_check" in record:
        check = record["heldout_check"]
        print(f"held-out animation ({check['pairs']} pairs, EMA, fast preset): IoU {check['iou']:.3f} "
              f"(std {check['iou_std']:.3f}), colour dE {check['colour_delta_e']:.1f}")  # fmt: skip
    print(f"wall {record['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
