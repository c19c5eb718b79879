"""Low-VRAM mode: transformer blocks live in pinned host memory and stream to the GPU one block ahead.

Each block's tensors (parameters and buffers, any dtype) are packed into one pinned host buffer, so loading
a block is a single large host-to-device copy. Two GPU slots alternate: while block i computes on the
current stream from one slot, block i+1 is copied into the other on a side stream. Events order the two:
a copy waits until the slot's previous block finished computing, and the compute waits for its copy.
On an H100 a 14B block (0.8 GB bf16) copies in ~30 ms against 130-430 ms of compute per block at 512p-704p,
so the copy hides behind compute.

The block list is replaced by a `StreamedBlockList` holding the same modules under the same names; iterating
it (the model's forward does `for block in self.blocks`) yields callables that do the bookkeeping around the
original block's call, so a compiled block (regional torch.compile) stays compiled and sees its tensors on
the GPU as usual. Weights rebound between forwards (LoRA fusing assigns new tensors) are copied back into
the pinned buffer before the block's next load.
"""

from __future__ import annotations

import torch
from torch import nn

_ALIGN = 256  # bytes; keeps every tensor view aligned for vectorised kernels


def _block_tensors(block: nn.Module) -> list[torch.Tensor]:
    tensors = [param for _, param in block.named_parameters(recurse=True)]
    tensors += [buffer for _, buffer in block.named_buffers(recurse=True) if buffer is not None]
    return tensors


class _PackedBlock:
    """A block's tensors packed into one host buffer, with views into it for each tensor."""

    def __init__(self, block: nn.Module, pin: bool) -> None:
        self.tensors = _block_tensors(block)
        self.offsets: list[int] = []
        size = 0
        for tensor in self.tensors:
            self.offsets.append(size)
            size += -(-tensor.numel() * tensor.element_size() // _ALIGN) * _ALIGN
        self.nbytes = size
        self.host = torch.empty(size, dtype=torch.uint8, pin_memory=pin)
        for tensor, offset in zip(self.tensors, self.offsets, strict=True):
            view = self._view(self.host, tensor, offset)
            view.copy_(tensor.detach())
            tensor.data = view

    @staticmethod
    def _view(buffer: torch.Tensor, like: torch.Tensor, offset: int) -> torch.Tensor:
        nbytes = like.numel() * like.element_size()
        return buffer[offset : offset + nbytes].view(like.dtype).view(like.shape)

    def absorb_rebound(self) -> int:
        """Copy into the host buffer any tensor whose `.data` was rebound elsewhere (e.g. by LoRA fusing,
        which assigns new tensors), and point it back; returns how many were absorbed."""
        host = self.host.untyped_storage().data_ptr()
        absorbed = 0
        for tensor, offset in zip(self.tensors, self.offsets, strict=True):
            if tensor.untyped_storage().data_ptr() != host:
                view = self._view(self.host, tensor, offset)
                view.copy_(tensor.detach())
                tensor.data = view
                absorbed += 1
        return absorbed

    def point_at(self, buffer: torch.Tensor) -> None:
        """Make every tensor of the block a view into `buffer` (host or a GPU slot)."""
        for tensor, offset in zip(self.tensors, self.offsets, strict=True):
            tensor.data = self._view(buffer, tensor, offset)


class BlockStreamer:
    """Owns the GPU slots, the copy stream and the events for a list of blocks run in order."""

    def __init__(self, blocks: nn.ModuleList, device: torch.device, pin: bool = True) -> None:
        self.device = device
        self.packed = [_PackedBlock(block, pin) for block in blocks]
        slot_bytes = max(p.nbytes for p in self.packed)
        self.slots = [torch.empty(slot_bytes, dtype=torch.uint8, device=device) for _ in range(2)]
        self.use_streams = device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device) if self.use_streams else None
        self.slot_free = [None, None]  # event: the slot's last block finished computing
        self.loaded: dict[int, tuple[int, torch.cuda.Event | None]] = {}  # block -> (slot, copy done)
        self.next_slot = 0
        self.host_bytes = sum(p.nbytes for p in self.packed)

    def _load(self, index: int) -> None:
        slot = self.next_slot
        self.next_slot ^= 1
        for other, (other_slot, _) in list(self.loaded.items()):
            if other_slot == slot:
                del self.loaded[other]
        packed = self.packed[index]
        packed.absorb_rebound()  # between forwards every tensor points at the host buffer unless rebound
        target = self.slots[slot][: packed.nbytes]
        if self.use_streams:
            with torch.cuda.stream(self.copy_stream):
                if self.slot_free[slot] is not None:
                    self.copy_stream.wait_event(self.slot_free[slot])
                target.copy_(packed.host, non_blocking=True)
                done = torch.cuda.Event()
                done.record(self.copy_stream)
        else:
            target.copy_(packed.host)
            done = None
        self.loaded[index] = (slot, done)

    def before(self, index: int) -> None:
        """Called on the compute stream just before block `index` runs."""
        if index not in self.loaded:
            self._load(index)
        slot, done = self.loaded[index]
        if done is not None:
            torch.cuda.current_stream(self.device).wait_event(done)
        self.packed[index].point_at(self.slots[slot])
        following = (index + 1) % len(self.packed)
        if following not in self.loaded and following != index:
            # Prefetch now: its copy waits (on the copy stream) for the other slot to be released, which
            # `after` records for the previous block; the compute stream does not wait here.
            self._load(following)

    def after(self, index: int) -> None:
        slot, _ = self.loaded[index]
        if self.use_streams:
            finished = torch.cuda.Event()
            finished.record(torch.cuda.current_stream(self.device))
            self.slot_free[slot] = finished
        # Point the block back at host memory, so nothing outside the window holds a GPU slot view.
        self.packed[index].point_at(self.packed[index].host)


class _StreamedCall:
    """Calls one block with its weights streamed in around the call."""

    __slots__ = ("block", "index", "streamer")

    def __init__(self, block: nn.Module, index: int, streamer: BlockStreamer) -> None:
        self.block, self.index, self.streamer = block, index, streamer

    def __call__(self, *args, **kwargs):
        self.streamer.before(self.index)
        try:
            return self.block(*args, **kwargs)
        finally:
            self.streamer.after(self.index)


class StreamedBlockList(nn.ModuleList):
    """The model's block list with streaming: the same modules under the same names (state dict keys, LoRA
    targets and hooks are unchanged), but iterating it, as the model's forward does, yields callables that
    bring each block's weights in before its call and release them after."""

    def __init__(self, blocks: list[nn.Module], streamer: BlockStreamer) -> None:
        super().__init__(blocks)
        object.__setattr__(self, "streamer", streamer)  # shared bookkeeping, not a submodule

    def __iter__(self):
        return (_StreamedCall(block, index, self.streamer) for index, block in enumerate(self._modules.values()))


def enable_block_streaming(model: nn.Module, device: torch.device | str, blocks_attr: str = "blocks",
                           pin: bool = True) -> BlockStreamer:
    """Move `model` to `device` except its blocks, which stream from pinned host memory.

    Returns the streamer (its `host_bytes` and `slots` say where the memory went). Call after any fp8
    conversion; compiling may come before or after (the blocks themselves are not wrapped).
    """
    device = torch.device(device)
    blocks = getattr(model, blocks_attr)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ValueError(f"model.{blocks_attr} must be a non-empty nn.ModuleList of transformer blocks")
    if isinstance(blocks, StreamedBlockList):
        return blocks.streamer
    inner = list(blocks._modules.values())
    # Packing copies each tensor straight into pinned host memory (from the GPU if the block was built
    # there) and frees the original, so the peak is one block above the final footprint.
    streamer = BlockStreamer(nn.ModuleList(inner), device, pin=pin and device.type == "cuda")
    # Everything else (embeddings, head, RoPE tables) is small and stays resident.
    for name, child in model.named_children():
        if name != blocks_attr:
            child.to(device)
    for param in model.parameters(recurse=False):
        param.data = param.data.to(device)
    for buffer in model.buffers(recurse=False):
        if buffer is not None:
            buffer.data = buffer.data.to(device)
    model._modules[blocks_attr] = StreamedBlockList(inner, streamer)
    return streamer


# ----------------------------------------------------------------------------------------- parked encoders

_PARKING_ATTR = "_scail2_host_parking"


def park_module(module: nn.Module, pin: bool = True) -> None:
    """Keep `module`'s weights in one pinned host buffer and drop any device copy.

    The first call packs the weights (from wherever they are) into the buffer; later calls only re-point the
    tensors at it, so parking after use is free: inference weights never change, nothing is copied back.
    Use for the encoders (umT5-XXL is 11 GB) that run once per job: `load_module` brings them back with one
    pinned copy (~0.5 s on PCIe 5) instead of `module.to()`'s per-tensor pageable copies both ways.
    """
    packed = getattr(module, _PARKING_ATTR, None)
    if packed is None:
        packed = _PackedBlock(module, pin=pin and torch.cuda.is_available())
        setattr(module, _PARKING_ATTR, packed)
    packed.point_at(packed.host)


def load_module(module: nn.Module, device: torch.device | str) -> None:
    """Copy a parked module's weights to `device` in one transfer (parks it first if it never was)."""
    device = torch.device(device)
    if getattr(module, _PARKING_ATTR, None) is None:
        park_module(module)
    packed = getattr(module, _PARKING_ATTR)
    if device.type == "cpu":
        packed.point_at(packed.host)
        return
    buffer = torch.empty(packed.nbytes, dtype=torch.uint8, device=device)
    buffer.copy_(packed.host, non_blocking=packed.host.is_pinned())
    packed.point_at(buffer)


def is_parked(module: nn.Module) -> bool:
    packed = getattr(module, _PARKING_ATTR, None)
    return packed is not None and all(t.device.type == "cpu" for t in packed.tensors)
