"""Training data for SCAIL-2 Nano: motion pairs streamed from worker processes, turned into model inputs with the
inference pipeline's own conditioning functions, and kept in a GPU buffer of encoded windows.

* :class:`PairStream` draws chunks of pairs with ``training.generate_pairs`` in ``DataLoader`` worker processes
  (scene sampling is numpy on a CPU core; rasterising runs on ``render_device``), rounded to uint8, the form the
  engine receives its inputs in. Chunk ``i`` of a run uses the train seed ``seed * 10**6 + i`` and a (mode,
  characters) setting drawn from :data:`SETTINGS`. Once the VAE is trained the workers also encode the chunks.
* :func:`encode_window` builds exactly what ``Scail2Pipeline.denoise_windows`` gives the DiT (reference latent and
  28-channel mask, driving video halved and VAE-encoded, driving masks halved and compressed, CLIP tokens), plus
  the clean target latents and a per-cell loss weight.
* :class:`WindowBuffer` keeps the most recent encoded windows per setting, so a window is trained on several
  times (with fresh noise and timesteps) while the workers keep replacing the oldest.
"""

from __future__ import annotations

import io
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from backend.scail2.conditioning.masks import (
    compress_driving_mask,
    compress_reference_mask,
    halve_bilinear,
    image_to_unit_range,
    video_to_unit_range,
)
from backend.scail2.models.image_encoder import ClipImageEncoder
from backend.scail2.models.vae import WanVideoVAE

from .pairs import TRAIN_SEEDS, MotionPairBatch, generate_pairs, palette_masks


@dataclass(frozen=True)
class Setting:
    mode: str
    characters: int
    weight: float

    @property
    def name(self) -> str:
        return f"{self.mode}-{self.characters}"

    @property
    def replace(self) -> bool:
        return self.mode == "replacement"


# Animation with one character is what the acceptance score is about; the others are trained too.
SETTINGS: tuple[Setting, ...] = (
    Setting("animation", 1, 0.5),
    Setting("replacement", 1, 0.25),
    Setting("animation", 2, 0.15),
    Setting("replacement", 2, 0.10),
)
CHUNKS_PER_SEED_BLOCK = 10**6


def chunk_seed(run_seed: int, chunk: int) -> int:
    """The generator seed of chunk ``chunk`` of run ``run_seed`` (always a train seed)."""
    seed = run_seed * CHUNKS_PER_SEED_BLOCK + chunk
    if chunk >= CHUNKS_PER_SEED_BLOCK or seed not in TRAIN_SEEDS:
        raise ValueError(f"run seed {run_seed} / chunk {chunk} leaves the train seed range {TRAIN_SEEDS}")
    return seed


def chunk_setting(run_seed: int, chunk: int) -> Setting:
    rng = np.random.default_rng([run_seed, chunk, 7])
    weights = np.array([s.weight for s in SETTINGS])
    return SETTINGS[int(rng.choice(len(SETTINGS), p=weights / weights.sum()))]


def to_uint8(images: Tensor) -> Tensor:
    """Float [0, 1] -> uint8, rounded: what a PNG of the pair (and so the engine) would hold."""
    return (images.clamp(0, 1) * 255).round_().to(torch.uint8)


class PairStream(IterableDataset):
    """Endless chunks of motion pairs, made in DataLoader worker processes.

    Worker ``w`` of ``W`` makes chunks ``first_chunk + w``, ``+ W``, ... Until a trained VAE exists in
    ``vae_dir`` a chunk holds the pairs' frames as uint8 CPU tensors (for training the VAE); from then on the
    worker encodes each chunk itself (:func:`encode_window`, on ``render_device``) and sends only the small
    encoded window, so the training process does nothing but train. With ``encode=False`` the workers only render
    and the training process encodes (:func:`encode_window`): with ``render_device="cpu"`` the workers then leave
    the GPU to the training process, which time-slicing between processes otherwise slows several times.
    """

    def __init__(self, run_seed: int, *, chunk_size: int, size: tuple[int, int], frames: int,
                 render_device: str, encoders: Path, vae_dir: Path, first_chunk: int = 0,
                 encode: bool = True):  # fmt: skip
        super().__init__()
        self.run_seed = run_seed
        self.chunk_size = chunk_size
        self.size = size
        self.frames = frames
        self.render_device = render_device
        self.encoders = Path(encoders)
        self.vae_dir = Path(vae_dir)
        self.first_chunk = first_chunk
        self.encode = encode

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        torch.set_num_threads(1)
        encoders: tuple[WanVideoVAE, ClipImageEncoder] | None = None
        chunk = self.first_chunk + worker
        while True:
            if self.encode and encoders is None and (self.vae_dir / "config.json").is_file():
                encoders = load_window_encoders(self.vae_dir, self.encoders, torch.device(self.render_device))
            pairs = self.make_chunk(chunk)
            if encoders is not None:
                mode = pairs["setting"].split("-")[0]
                window = encode_window(pairs, mode, *encoders, torch.device(self.render_device))
                pairs = {"chunk": chunk, "setting": pairs["setting"], "window": window}
            yield pack(pairs)
            chunk += workers

    def make_chunk(self, chunk: int) -> dict:
        setting = chunk_setting(self.run_seed, chunk)
        batch = generate_pairs(
            self.chunk_size, seed=chunk_seed(self.run_seed, chunk), mode=setting.mode,
            characters=setting.characters, size=self.size, frames=self.frames, device=self.render_device,
            split="train",
        )  # fmt: skip
        return {"chunk": chunk, "setting": setting.name, **pair_tensors(batch)}


def pair_tensors(batch: MotionPairBatch) -> dict[str, Tensor]:
    """A batch's images as uint8 and identity maps as uint8: what a chunk carries."""
    return {
        "reference": to_uint8(batch.reference),
        "reference_ids": batch.reference_ids.to(torch.uint8),
        "driving": to_uint8(batch.driving),
        "driving_ids": batch.driving_ids.to(torch.uint8),
        "target": to_uint8(batch.target),
        "target_ids": batch.target_ids.to(torch.uint8),
    }


def pack(chunk: dict) -> bytes:
    """A chunk as bytes: it then travels through the DataLoader's pipe rather than shared memory, whose size
    varies between machines (a small /dev/shm breaks tensor passing)."""
    buffer = io.BytesIO()
    torch.save(_to_cpu(chunk), buffer)
    return buffer.getvalue()


def unpack(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), weights_only=True)


def _to_cpu(value):
    if isinstance(value, Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


def load_window_encoders(vae_dir: Path, encoders: Path, device: torch.device) -> tuple[WanVideoVAE, ClipImageEncoder]:
    """The trained VAE (a diffusers folder) and the frozen CLIP, as the engine loads them."""
    from diffusers import AutoencoderKLWan

    vae = WanVideoVAE(AutoencoderKLWan.from_pretrained(str(vae_dir)).to(device))
    clip = ClipImageEncoder.from_diffusers(Path(encoders) / "image_encoder", dtype=torch.float32, device=device)
    return vae, clip


class ChunkFeeder:
    """Runs a DataLoader over a :class:`PairStream` in a background thread; the training loop takes chunks when
    they are ready (``take``) or waits for one (``wait``)."""

    def __init__(self, stream: PairStream, workers: int, prefetch: int = 2):
        multiprocessing_context = "spawn" if workers > 0 else None
        self.loader = DataLoader(
            stream, batch_size=None, num_workers=workers, prefetch_factor=prefetch if workers else None,
            multiprocessing_context=multiprocessing_context, persistent_workers=workers > 0,
        )  # fmt: skip
        self.queue: queue.Queue = queue.Queue(maxsize=max(4, 2 * workers))
        self.produced = 0
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="chunk-feeder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for data in self.loader:
                while self._paused.is_set() and not self._stop.is_set():
                    time.sleep(0.1)
                chunk = unpack(data)
                while not self._stop.is_set():
                    try:
                        self.queue.put(chunk, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised in the training thread
            self._error = exc

    def _check(self) -> None:
        if self._error is not None:
            raise RuntimeError("the pair workers failed") from self._error

    def pause(self) -> None:
        """Stop pulling chunks: the workers fill their prefetch slots and then wait, leaving the GPU to training.
        Measured on one H200: with 8 workers rendering and encoding beside it, a DiT step took ~580 ms; with the
        workers paused, ~110 ms (GPU time slices between processes)."""
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def burst(self, seconds: float, limit: int) -> list[dict]:
        """Let the workers run for ``seconds`` (or until ``limit`` chunks), collect what they made, pause again."""
        self.resume()
        chunks: list[dict] = []
        deadline = time.monotonic() + seconds
        try:
            while len(chunks) < limit and time.monotonic() < deadline:
                self._check()
                try:
                    chunks.append(self.queue.get(timeout=max(0.01, min(0.5, deadline - time.monotonic()))))
                except queue.Empty:
                    continue
        finally:
            self.pause()
        self.produced += len(chunks)
        return chunks + self.take(limit - len(chunks))

    def take(self, limit: int) -> list[dict]:
        """Up to ``limit`` chunks that are ready now (possibly none)."""
        self._check()
        chunks = []
        while len(chunks) < limit:
            try:
                chunks.append(self.queue.get_nowait())
            except queue.Empty:
                break
        self.produced += len(chunks)
        return chunks

    def wait(self, timeout: float = 600.0) -> dict:
        """The next chunk, waiting for it."""
        self._check()
        try:
            chunk = self.queue.get(timeout=timeout)
        except queue.Empty:
            self._check()
            raise RuntimeError(f"no motion pairs arrived within {timeout:.0f} s") from None
        self.produced += 1
        return chunk

    def close(self) -> None:
        self._stop.set()
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


# ------------------------------------------------------------------------------------------- conditioning


def mask_unit(ids: Tensor, mode: str, role: str) -> Tensor:
    """Identity map -> palette mask in [-1, 1] via uint8, as a mask PNG reaches the engine."""
    return image_to_unit_range(to_uint8(palette_masks(ids.long(), mode=mode, role=role)))


def character_weight(target_ids: Tensor, latent_frames: int) -> Tensor:
    """[B, T, H, W] ids -> [B, 1, T_lat, H/8, W/8]: the character's coverage per latent cell (max over the 4
    frames a latent frame packs, the first frame alone, like the VAE)."""
    cover = F.avg_pool2d((target_ids > 0).float(), 8)  # [B, T, h, w]
    first, rest = cover[:, :1], cover[:, 1:]
    rest = rest.unflatten(1, (latent_frames - 1, 4)).amax(dim=2)
    return torch.cat([first, rest], dim=1).unsqueeze(1)


@torch.no_grad()
def encode_window(chunk: dict, mode: str, vae: WanVideoVAE, clip: ClipImageEncoder, device: torch.device) -> dict:
    """A chunk of pairs -> the DiT inputs of one window without history, as ``Scail2Pipeline`` builds them."""
    reference = image_to_unit_range(chunk["reference"].to(device))  # [B, 3, H, W]
    driving = video_to_unit_range(chunk["driving"].to(device))  # [B, T, 3, H, W]
    target = video_to_unit_range(chunk["target"].to(device))
    batch, frames = driving.shape[:2]
    reference_mask = mask_unit(chunk["reference_ids"].to(device), mode, "reference")  # [B, 3, H, W]
    driving_mask = mask_unit(chunk["driving_ids"].to(device), mode, "driving")  # [B, T, 3, H, W]

    pose = halve_bilinear(driving.flatten(0, 1)).unflatten(0, (batch, frames)).transpose(1, 2)
    x0 = vae.encode(target.transpose(1, 2))
    return {
        "x0": x0,
        "ref_latent": vae.encode(reference[:, :, None]),
        "ref_mask": torch.stack([compress_reference_mask(m) for m in reference_mask]),
        "pose_latent": vae.encode(pose),
        "driving_masks": torch.stack([compress_driving_mask(m.transpose(0, 1)) for m in driving_mask]),
        "clip": clip.encode(reference).float(),
        "weight": character_weight(chunk["target_ids"].to(device), x0.shape[2]),
    }


class WindowBuffer:
    """Ring buffers of encoded windows, one per setting, on the training device."""

    STORED_DTYPES = {"x0": torch.float32}

    def __init__(self, capacity: int, device: torch.device):
        self.capacity = capacity
        self.device = device
        self.store: dict[str, dict[str, Tensor]] = {}
        self.filled: dict[str, int] = {}
        self.cursor: dict[str, int] = {}
        self.added = 0

    def add(self, setting: str, window: dict[str, Tensor]) -> None:
        count = next(iter(window.values())).shape[0]
        if setting not in self.store:
            self.store[setting] = {
                key: torch.empty((self.capacity, *value.shape[1:]), dtype=self.STORED_DTYPES.get(key, torch.bfloat16),
                                 device=self.device)
                for key, value in window.items()
            }  # fmt: skip
            self.filled[setting] = 0
            self.cursor[setting] = 0
        index = (self.cursor[setting] + torch.arange(count, device=self.device)) % self.capacity
        for key, value in window.items():
            self.store[setting][key][index] = value.to(self.store[setting][key].dtype)
        self.cursor[setting] = (self.cursor[setting] + count) % self.capacity
        self.filled[setting] = min(self.capacity, self.filled[setting] + count)
        self.added += count

    def settings(self) -> list[str]:
        return [name for name, filled in self.filled.items() if filled > 0]

    def sample(self, setting: str, batch: int, generator: torch.Generator) -> dict[str, Tensor]:
        index = torch.randint(self.filled[setting], (batch,), generator=generator, device="cpu").to(self.device)
        return {key: value[index].float() for key, value in self.store[setting].items()}
