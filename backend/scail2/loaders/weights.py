"""Safe, lazy checkpoint reading and strict loading into models built on the ``meta`` device.

Nothing here unpickles arbitrary objects: ``.pt``/``.pth``/``.bin`` files go through
``torch.load(weights_only=True, mmap=True)`` and ``.safetensors`` files through ``safe_open``. A checkpoint is
opened as a :class:`LazyStateDict`: shapes and dtypes are known up front, but each tensor is only read when it is
loaded, so a 65 GB fp32 file is never copied whole into host RAM. Key conversion happens on that lazy view
(:meth:`LazyStateDict.convert`), including tensors derived from slices of another tensor (a fused qkv split
into q, k and v).

Typical use (the DiT, an encoder)::

    with meta_init():
        model = build_model(config)                 # parameters on "meta", real buffers
    state = open_state_dict(path)                    # LazyStateDict, nothing read yet
    state = state.convert(official_to_model_keys)    # still lazy
    load_into(model, state, dtype=torch.bfloat16, device="cuda")

Every problem (unreadable, truncated, foreign file; missing, unexpected or mis-shaped tensors) raises
:class:`~backend.scail2.errors.CheckpointError` naming the file and the keys.
"""

from __future__ import annotations

import importlib
import json
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError

__all__ = [
    "LazyStateDict",
    "TensorRef",
    "load_into",
    "meta_init",
    "find_weights_file",
    "open_state_dict",
    "read_json",
    "verify_state_dict",
    "SAFETENSORS_SUFFIXES",
    "TORCH_SUFFIXES",
]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)
# Containers some trainers wrap the state dict in (SAT/FSDP saves it under "module").
_NESTED_STATE_KEYS = ("module", "state_dict", "model")

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class TensorRef:
    """One tensor of a checkpoint: its shape and dtype, and how to read it.

    ``origin`` is the key the tensor has in the file, so that errors after a key conversion still name what the
    user's file contains.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    read: Callable[[], torch.Tensor]
    origin: str
    # True when read() returns a new tensor that nothing else references (safetensors get_tensor), so loading
    # may keep it as is; False for views (into a memory map, or slices of a bigger tensor), which are copied.
    fresh: bool = False

    def derive(self, shape: Iterable[int], transform: Callable[[torch.Tensor], torch.Tensor]) -> TensorRef:
        """A tensor computed from this one on read (a slice, a reshape); ``shape`` is its result shape."""
        read = self.read
        return TensorRef(tuple(shape), self.dtype, lambda: transform(read()), self.origin)


class LazyStateDict(Mapping[str, TensorRef]):
    """A read-only mapping ``key -> TensorRef`` over one checkpoint (one file or a set of shards).

    ``source`` is the path shown in error messages.
    """

    def __init__(self, refs: Mapping[str, TensorRef], source: str | Path):
        self._refs = dict(refs)
        self.source = str(source)

    def __getitem__(self, key: str) -> TensorRef:
        return self._refs[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self) -> str:
        return f"LazyStateDict({self.source!r}, {len(self)} tensors)"

    def read(self, key: str) -> torch.Tensor:
        """Read one tensor (errors name the file and the key)."""
        ref = self._refs[key]
        try:
            return ref.read()
        except CheckpointError:
            raise
        except Exception as exc:  # a truncated file often only fails when the bytes are read
            raise CheckpointError(
                f"{self.source}: cannot read tensor {ref.origin!r} ({exc}). The file is probably truncated or "
                "corrupt: download it again."
            ) from exc

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {key: ref.shape for key, ref in self._refs.items()}

    def convert(self, converter: Callable[[LazyStateDict], Mapping[str, TensorRef]]) -> LazyStateDict:
        """Apply a key conversion: ``converter(self)`` returns the new ``key -> TensorRef`` mapping."""
        return LazyStateDict(converter(self), self.source)

    def rename(self, rename_key: Callable[[str], str | None]) -> LazyStateDict:
        """Rename keys one to one; a key renamed to ``None`` is dropped. Two keys may not get the same name."""
        renamed: dict[str, TensorRef] = {}
        for key, ref in self._refs.items():
            new_key = rename_key(key)
            if new_key is None:
                continue
            if new_key in renamed:
                raise CheckpointError(
                    f"{self.source}: keys {renamed[new_key].origin!r} and {ref.origin!r} both map to {new_key!r}"
                )
            renamed[new_key] = ref
        return LazyStateDict(renamed, self.source)


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty (0 bytes); the download did not finish")


def _open_safetensors(path: Path) -> dict[str, TensorRef]:
    from safetensors import safe_open

    _check_readable(path)
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
        keys = list(handle.keys())
        refs: dict[str, TensorRef] = {}
        for key in keys:
            tensor_slice = handle.get_slice(key)
            dtype_name = tensor_slice.get_dtype()
            if dtype_name not in _SAFETENSORS_DTYPES:
                raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {dtype_name}")
            refs[key] = TensorRef(
                tuple(tensor_slice.get_shape()),
                _SAFETENSORS_DTYPES[dtype_name],
                # The handle stays open (it memory-maps the file); get_tensor reads just this tensor.
                lambda key=key: handle.get_tensor(key),
                key,
                fresh=True,
            )
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc}). It is probably truncated or corrupt: download it "
            "again."
        ) from exc
    return refs


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    # SAT/FSDP checkpoints hold the weights under "module"; others under "state_dict".
    for _ in range(2):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            nested = next((obj[k] for k in _NESTED_STATE_KEYS if isinstance(obj.get(k), Mapping)), None)
            if nested is None:
                break
            obj = nested
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{path}: contains no tensors (top-level keys: {sorted(map(str, obj))[:10]}); expected a state dict, "
            f"possibly under one of {list(_NESTED_STATE_KEYS)}"
        )
    return tensors


# Plain-data classes training checkpoints often carry next to the weights (the run's argparse arguments, numpy
# RNG states). They only hold values, so torch's weights-only unpickler may build them; nothing else is allowed.
_HARMLESS_GLOBALS = {
    "argparse.Namespace",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
}
_NUMPY_DTYPE_CLASS = re.compile(r"numpy\.dtypes\.\w+DType")


def _load_with_harmless_globals(path: Path) -> object:
    """Retry a weights-only load allowing the plain-data classes above; refuse anything else, naming it."""
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc}); download it again") from exc
    refused = [name for name in needed if name not in _HARMLESS_GLOBALS and not _NUMPY_DTYPE_CLASS.fullmatch(name)]
    if refused:
        raise CheckpointError(
            f"{path}: refused to load: besides tensors the file holds Python objects of {refused}, which are never "
            "unpickled for safety. Re-save just the state dict (e.g. as .safetensors) in a trusted environment."
        )
    allowed = []
    for name in needed:
        module_name, _, attribute = name.rpartition(".")
        allowed.append(getattr(importlib.import_module(module_name), attribute))
    if any(name.startswith("numpy.") for name in needed):
        # dtype classes are only named while an array is rebuilt, so the scan above does not list them.
        import numpy

        allowed += [getattr(numpy.dtypes, n) for n in dir(numpy.dtypes) if n.endswith("DType")]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc}); download it again") from exc


def _open_torch(path: Path) -> dict[str, TensorRef]:
    _check_readable(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a PyTorch zip checkpoint (truncated, corrupt, or a different kind of file). Download it "
            "again, or convert legacy-format files with torch.save() in a trusted environment."
        )
    try:
        # weights_only: plain tensors and containers only, never arbitrary objects. mmap: tensor storages stay
        # in the file; a tensor's bytes are read when it is converted onto its target device.
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        obj = _load_with_harmless_globals(path)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot read checkpoint ({exc}). It is probably truncated or corrupt: download it again."
        ) from exc
    tensors = _unwrap_state_dict(obj, path)
    return {
        key: TensorRef(tuple(t.shape), t.dtype, lambda t=t: t, key)  # a view into the memory map
        for key, t in tensors.items()
    }


def _open_safetensors_index(path: Path) -> dict[str, TensorRef]:
    _check_readable(path)
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except Exception as exc:
        raise CheckpointError(f"{path}: not a valid safetensors index (expected JSON with 'weight_map'): {exc}") from exc
    refs: dict[str, TensorRef] = {}
    for shard_name in sorted(set(weight_map.values())):
        shard_refs = _open_safetensors(path.parent / shard_name)
        listed = {k for k, v in weight_map.items() if v == shard_name}
        absent = sorted(listed - set(shard_refs))
        if absent:
            raise CheckpointError(f"{path.parent / shard_name}: lacks tensors the index lists: {absent[:10]}")
        refs.update(shard_refs)
    return refs


def open_state_dict(path: str | Path) -> LazyStateDict:
    """Open a checkpoint lazily: ``.safetensors``, ``*.safetensors.index.json`` (shards), or a torch zip file.

    Raises :class:`CheckpointError` naming ``path`` for anything unreadable.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".safetensors.index.json"):
        refs = _open_safetensors_index(path)
    elif name.endswith(SAFETENSORS_SUFFIXES):
        refs = _open_safetensors(path)
    elif name.endswith(TORCH_SUFFIXES):
        refs = _open_torch(path)
    else:
        raise CheckpointError(
            f"{path}: unknown checkpoint format; expected one of "
            f"{list(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)} or a .safetensors.index.json"
        )
    return LazyStateDict(refs, path)


def check_file_header(path: str | Path) -> None:
    """Read only the header of a checkpoint file and check that the file holds every byte it announces, without
    reading the tensors (milliseconds, even for a 65 GB file). Raises :class:`CheckpointError` naming ``path``."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(SAFETENSORS_SUFFIXES):
        _open_safetensors(path)  # safetensors refuses a file shorter than its header's offsets
        return
    if name.endswith(".safetensors.index.json"):
        _open_safetensors_index(path)
        return
    if not name.endswith(TORCH_SUFFIXES):
        open_state_dict(path)  # the unknown-format error
    _check_readable(path)
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            end = max(info.header_offset + len(info.FileHeader()) + info.compress_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a complete PyTorch zip checkpoint ({exc}); it is probably truncated: download it again"
        ) from exc
    if end > size:
        raise CheckpointError(f"{path}: the file is truncated ({size} of at least {end} bytes); download it again")


@contextmanager
def meta_init():
    """Build modules with parameters on the ``meta`` device (no memory), buffers as usual.

    Buffers stay real because many are computed in ``__init__`` and are not in checkpoints (position ids,
    RoPE tables); :func:`load_into` moves them to the target device.
    """
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        yield


def _format_keys(keys: Iterable[str], limit: int = 20) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def _alias_groups(model: nn.Module) -> list[list[str]]:
    """Names that share one Parameter object (e.g. T5 "shared.weight" and "encoder.embed_tokens.weight")."""
    aliases: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    return [names for names in aliases.values() if len(names) > 1]


def verify_state_dict(model: nn.Module, state: LazyStateDict) -> None:
    """Check, without reading any tensor, that ``state`` has exactly the keys and shapes of ``model``.

    Works on models built on ``meta`` (e.g. the 14B DiT). Raises :class:`CheckpointError` naming
    ``state.source`` with every missing, unexpected and mis-shaped key (expected vs found shapes).
    """
    targets = model.state_dict(keep_vars=True)
    provided = set(state)
    missing = set(targets) - provided
    for group in _alias_groups(model):
        if provided & set(group):
            missing -= set(group)
    unexpected = provided - set(targets)
    mismatched = {
        key: (tuple(targets[key].shape), state[key].shape)
        for key in provided & set(targets)
        if tuple(targets[key].shape) != state[key].shape
    }
    if missing or unexpected or mismatched:
        lines = [f"{state.source}: checkpoint does not match {type(model).__name__}."]
        if missing:
            lines.append(f"Missing {len(missing)} tensors: {_format_keys(missing)}")
        if unexpected:
            origins = [f"{k} (file key {state[k].origin})" if state[k].origin != k else k for k in unexpected]
            lines.append(f"Unexpected {len(unexpected)} tensors: {_format_keys(origins)}")
        if mismatched:
            shown = [
                f"{k}: expected {list(exp)}, found {list(got)}"
                + (f" (file key {state[k].origin})" if state[k].origin != k else "")
                for k, (exp, got) in sorted(mismatched.items())
            ]
            lines.append(f"Mis-shaped {len(mismatched)} tensors: " + "; ".join(shown[:20]))
        lines.append("Check that the file is the right component and model size for this folder.")
        raise CheckpointError("\n".join(lines))


def load_into(
    model: nn.Module,
    state: LazyStateDict,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    keep_fp32: Callable[[str], bool] | None = None,
) -> nn.Module:
    """Load every tensor of ``state`` into ``model``, strictly, tensor by tensor, onto ``device`` in ``dtype``.

    ``model`` may have its parameters on ``meta`` (see :func:`meta_init`). Each tensor is read from the
    checkpoint, moved to ``device`` and cast to ``dtype`` (floating tensors only; ``keep_fp32(name)`` keeps
    chosen parameters in float32), then assigned in place of the parameter, so the host never holds more than
    one tensor. Tied parameters (the same tensor under several names) need only one of their names in
    ``state``. Buffers the checkpoint does not provide are moved to ``device``.

    Raises :class:`CheckpointError` naming ``state.source`` with every missing, unexpected and mis-shaped key
    (expected vs found shapes) before anything is loaded.
    """
    device = torch.device(device)
    verify_state_dict(model, state)
    targets = model.state_dict(keep_vars=True)
    alias_groups = _alias_groups(model)

    loaded: set[str] = set()
    for key in state:
        tensor = state.read(key)
        target = targets[key]
        if tensor.is_floating_point() and target.is_floating_point():
            keep = keep_fp32 is not None and keep_fp32(key)
            to_dtype = torch.float32 if keep else (dtype or target.dtype)
        else:
            to_dtype = target.dtype
        # Move first, then cast: the cast runs on the target device and the host holds one tensor at most.
        value = tensor.to(device=device).to(dtype=to_dtype)
        if value is tensor and not state[key].fresh:
            value = value.clone()  # never keep a view into the checkpoint's memory map or a bigger tensor
        _assign(model, key, value)
        loaded.add(key)

    for group in alias_groups:
        source_name = next((name for name in group if name in loaded), None)
        if source_name is not None:
            shared = _get(model, source_name)
            for name in group:
                _set_parameter(model, name, shared)

    for module in model.modules():
        for name, buffer in list(module._buffers.items()):
            if buffer is not None and buffer.device != device:
                module._buffers[name] = buffer.to(device)
    leftover = [name for name, p in model.named_parameters() if p.is_meta]
    if leftover:  # cannot happen after the strict check, unless the model changes its parameters on the fly
        raise CheckpointError(f"{state.source}: parameters left unloaded: {_format_keys(leftover)}")
    return model


def _split(name: str) -> tuple[str, str]:
    module_name, _, leaf = name.rpartition(".")
    return module_name, leaf


def _get(model: nn.Module, name: str) -> nn.Parameter:
    module_name, leaf = _split(name)
    return model.get_submodule(module_name)._parameters[leaf]


def _set_parameter(model: nn.Module, name: str, param: nn.Parameter) -> None:
    module_name, leaf = _split(name)
    model.get_submodule(module_name)._parameters[leaf] = param


def _assign(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, leaf = _split(name)
    module = model.get_submodule(module_name)
    if leaf in module._parameters:
        old = module._parameters[leaf]
        module._parameters[leaf] = nn.Parameter(value, requires_grad=old.requires_grad if old is not None else False)
    elif leaf in module._buffers:
        module._buffers[leaf] = value
    else:  # state_dict() listed it, so only extra-state entries end up here
        raise CheckpointError(f"cannot assign {name!r}: {type(module).__name__} has no parameter or buffer {leaf!r}")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: file not found") from exc
    except Exception as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc


def find_weights_file(folder: Path, stem: str) -> Path:
    """The weights file of a transformers/diffusers folder: single safetensors, sharded index, or a .bin."""
    for name in (f"{stem}.safetensors", f"{stem}.safetensors.index.json", f"{stem}.fp16.safetensors"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.glob("*.safetensors*"))
    if len(found) == 1:
        return folder / found[0]
    raise CheckpointError(
        f"{folder}: no weights found (looked for {stem}.safetensors and {stem}.safetensors.index.json; "
        f"found {found or 'nothing'})"
    )
