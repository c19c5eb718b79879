"""LoRAs fused into the SCAIL-2 DiT weights, with strengths that can change between jobs.

Formats:

* **Kijai / lightx2v** ``.safetensors``: ``[diffusion_model.]<wan module>.lora_down.weight`` / ``.lora_up.weight``,
  optional ``.alpha`` and ``.diff_b`` (bias delta) — what the official ``wan/utils/lora.py`` fuses — plus the full
  deltas ``.diff`` (e.g. norm weights, ``blocks.N.modulation.diff``) and ``<prefix>.diff_m`` (``<prefix>.modulation``)
  that these files also carry and ComfyUI applies (the official fuser ignores them). ``lora_A`` / ``lora_B`` names
  are accepted as aliases of down / up. Wan2.1-I2V LoRAs carry a ``patch_embedding.diff`` for Wan's 36 input
  channels, which SCAIL-2 (20) lacks: it is skipped, as ComfyUI does (see :meth:`Lora.check`).
* **Official SAT** ``.pt`` (``bias-aware-dpo-lora.pt``, ``relighting-lora.pt``): ``...transformer.layers.N.
  <attention.query_key_value|attention.dense|cross_attention.query|cross_attention.key_value|cross_attention.dense|
  mlp.dense_h_to_4h|mlp.dense_4h_to_h>.lora_layer[.j].{down,up}.weight`` (and ``.diff_b``), converted as the
  official ``convert_lora.py`` does (``lora_layer.j`` of a fused projection is its j-th part). Keys without
  ``lora_layer`` are ignored, as there.

Fusion follows the official code: ``W += strength * (up @ down)`` and ``b += strength * diff_b``, with no rank
scaling (an ``.alpha`` key, which those files do not have, scales by ``alpha / rank`` as everywhere else).

:class:`LoraManager` keeps the fused set of a loaded model. Changing it recomputes only the parameters involved:
from the pristine checkpoint tensors when the model came from
:meth:`~backend.scail2.models.transformer_scail2.SCAIL2Transformer.from_single_file` (exact, no drift in half
precision), otherwise by applying the difference of strengths in float32.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .dit_keys import KEY_PREFIXES, wan_module_to_internal, wan_to_internal
from .weights import LazyStateDict, open_state_dict

logger = logging.getLogger(__name__)

__all__ = ["Lora", "LoraManager", "LoraPatch", "load_lora", "sat_lora_module_to_wan"]

_LORA_PREFIXES = (*KEY_PREFIXES, "transformer.")


@dataclass
class LoraPatch:
    """The update of one model parameter by one LoRA file: ``scale * up @ down`` or a full ``diff``."""

    target: str  # internal parameter name
    source_key: str  # the file's key, for error messages
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    diff: torch.Tensor | None = None
    scale: float = 1.0

    def delta_shape(self) -> tuple[int, ...]:
        if self.diff is not None:
            return tuple(self.diff.shape)
        return (self.up.shape[0], *self.down.shape[1:])

    def delta(self, target_shape: torch.Size, device: torch.device) -> torch.Tensor:
        """The float32 update, shaped like the parameter, on ``device``."""
        if self.diff is not None:
            return self.diff.to(device=device, dtype=torch.float32).reshape(target_shape)
        up = self.up.to(device=device, dtype=torch.float32).flatten(1)
        down = self.down.to(device=device, dtype=torch.float32).flatten(1)
        return (self.scale * (up @ down)).reshape(target_shape)


@dataclass
class Lora:
    """A parsed LoRA file: its patches by internal parameter name (several patches may hit one parameter)."""

    path: Path
    patches: dict[str, list[LoraPatch]] = field(default_factory=dict)
    # source key -> why it is not applied (filled by check()).
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def targets(self) -> set[str]:
        return set(self.patches)

    def check(self, model: nn.Module) -> None:
        """Raise :class:`CheckpointError` naming the file and key for a target the model lacks or a mis-shaped
        delta.

        One known mismatch is skipped instead (listed in :attr:`skipped`, logged): a ``patch_embedding`` weight
        update whose only difference is the number of input channels. Wan2.1-I2V LoRAs such as lightx2v carry
        one for Wan's 36-channel input, which SCAIL-2 (20 channels) does not have; ComfyUI, whose template the
        fast preset follows, skips it the same way.
        """
        params = dict(model.named_parameters())
        self.skipped = {}
        for target, patches in self.patches.items():
            for patch in patches:
                if target not in params:
                    raise CheckpointError(
                        f"{self.path}: LoRA key {patch.source_key!r} targets {target!r}, which the SCAIL-2 DiT does not "
                        "have; the LoRA is for another model"
                    )
                expected = tuple(params[target].shape)
                if patch.diff is None and (patch.up.shape[1] != patch.down.shape[0] or patch.up.ndim < 2):
                    raise CheckpointError(
                        f"{self.path}: LoRA key {patch.source_key!r}: up {list(patch.up.shape)} and down "
                        f"{list(patch.down.shape)} have different ranks"
                    )
                got = patch.delta_shape()
                same_rank = len(got) == len(expected)
                fits = (
                    got == expected if same_rank else torch.Size(got).numel() == torch.Size(expected).numel()
                )
                if not fits and _is_input_channel_mismatch(target, got, expected):
                    self.skipped[patch.source_key] = (
                        f"{list(got)} update for {list(expected)} {target} (another model's input channels)"
                    )
                    logger.warning(
                        "%s: skipping LoRA key %s: %s",
                        self.path,
                        patch.source_key,
                        self.skipped[patch.source_key],
                    )
                    continue
                if not fits or got[0] != expected[0]:
                    raise CheckpointError(
                        f"{self.path}: LoRA key {patch.source_key!r} gives a {list(got)} update for parameter "
                        f"{target!r} of shape {list(expected)}; the LoRA is for another model size"
                    )

    def patches_for(self, target: str) -> list[LoraPatch]:
        """The patches of ``target`` that apply (after :meth:`check`)."""
        return [p for p in self.patches.get(target, ()) if p.source_key not in self.skipped]


def _is_input_channel_mismatch(target: str, got: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    return (
        target in ("patch_embedding.weight", "pose_patch_embedding.weight")
        and len(got) == len(expected) >= 2
        and got[0] == expected[0]
        and got[2:] == expected[2:]
        and got[1] != expected[1]
    )


# --- parsing ------------------------------------------------------------------------------------------------

# (SAT module template, Wan module names of its fused parts, in lora_layer.j order).
_SAT_LORA_MODULES = (
    (
        r"transformer\.layers\.(\d+)\.attention\.query_key_value",
        ("self_attn.q", "self_attn.k", "self_attn.v"),
    ),
    (r"transformer\.layers\.(\d+)\.attention\.dense", ("self_attn.o",)),
    (r"transformer\.layers\.(\d+)\.cross_attention\.query", ("cross_attn.q",)),
    (r"transformer\.layers\.(\d+)\.cross_attention\.key_value", ("cross_attn.k", "cross_attn.v")),
    (r"transformer\.layers\.(\d+)\.cross_attention\.dense", ("cross_attn.o",)),
    (r"transformer\.layers\.(\d+)\.mlp\.dense_h_to_4h", ("ffn.0",)),
    (r"transformer\.layers\.(\d+)\.mlp\.dense_4h_to_h", ("ffn.2",)),
)
_SAT_LORA_RE = re.compile(
    r"^(?P<module>.+)\.lora_layer(?:\.(?P<part>\d+))?\.(?P<kind>down\.weight|up\.weight|diff_b)$"
)


def sat_lora_module_to_wan(module: str, part: int | None) -> str | None:
    """SAT LoRA module (no prefix) and ``lora_layer`` index -> Wan module name, e.g.
    ``transformer.layers.3.attention.query_key_value``, 1 -> ``blocks.3.self_attn.k``."""
    for pattern, wan_parts in _SAT_LORA_MODULES:
        match = re.fullmatch(pattern, module)
        if match:
            if len(wan_parts) == 1 and part is None:
                return f"blocks.{match.group(1)}.{wan_parts[0]}"
            if len(wan_parts) > 1 and part is not None and part < len(wan_parts):
                return f"blocks.{match.group(1)}.{wan_parts[part]}"
            return None
    return None


def _strip_prefix(key: str) -> str:
    for prefix in _LORA_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _module_to_internal(module: str) -> str:
    """Wan module name (or already an internal one) -> internal module name; unknown names pass through."""
    return wan_module_to_internal(module) or module


def _read_all(state: LazyStateDict) -> dict[str, torch.Tensor]:
    # LoRA files are small next to the model (≤ ~1.2 GB): read them whole, as CPU tensors.
    return {key: state.read(key) for key in state}


def _parse_sat(path: Path, tensors: Mapping[str, torch.Tensor]) -> Lora:
    groups: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, tensor in tensors.items():
        if ".lora_layer" not in key:
            continue  # the official converter ignores everything else
        match = _SAT_LORA_RE.match(_strip_prefix(key))
        if match is None:
            raise CheckpointError(f"{path}: unsupported SAT LoRA key {key!r}")
        part = None if match.group("part") is None else int(match.group("part"))
        wan_module = sat_lora_module_to_wan(match.group("module"), part)
        if wan_module is None:
            raise CheckpointError(
                f"{path}: SAT LoRA key {key!r} targets a module the SCAIL-2 DiT does not have"
            )
        kind = {"down.weight": "down", "up.weight": "up", "diff_b": "diff_b"}[match.group("kind")]
        groups.setdefault(wan_module, {})[kind] = (key, tensor)
    if not groups:
        raise CheckpointError(f"{path}: no LoRA tensors (keys containing 'lora_layer') found")
    return _build(path, groups)


def _parse_kijai(path: Path, tensors: Mapping[str, torch.Tensor]) -> Lora:
    suffixes = (
        (".lora_down.weight", "down"),
        (".lora_up.weight", "up"),
        (".lora_A.weight", "down"),
        (".lora_B.weight", "up"),
        (".alpha", "alpha"),
        (".diff_b", "diff_b"),
        (".diff_m", "diff_m"),
        (".diff", "diff"),
    )
    groups: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, tensor in tensors.items():
        bare = _strip_prefix(key)
        for suffix, kind in suffixes:
            if bare.endswith(suffix):
                groups.setdefault(bare[: -len(suffix)], {})[kind] = (key, tensor)
                break
        else:
            raise CheckpointError(
                f"{path}: unsupported LoRA key {key!r}; expected <module>.lora_down.weight / .lora_up.weight / "
                ".diff_b / .diff / .alpha"
            )
    return _build(path, groups)


def _build(path: Path, groups: Mapping[str, Mapping[str, tuple[str, torch.Tensor]]]) -> Lora:
    lora = Lora(path)

    def add(target: str, patch: LoraPatch) -> None:
        lora.patches.setdefault(target, []).append(patch)

    for module, parts in groups.items():
        if "diff_m" in parts:
            key, tensor = parts["diff_m"]
            modulation = f"{module}.modulation" if module else "modulation"
            target = wan_to_internal(modulation) or modulation
            add(target, LoraPatch(target, key, diff=tensor))
        internal_module = _module_to_internal(module)
        if "down" in parts or "up" in parts:
            if "down" not in parts or "up" not in parts:
                key = (parts.get("down") or parts.get("up"))[0]
                raise CheckpointError(f"{path}: LoRA key {key!r} has no matching lora_up/lora_down partner")
            down_key, down = parts["down"]
            up = parts["up"][1]
            scale = 1.0
            if "alpha" in parts:
                scale = float(parts["alpha"][1]) / down.shape[0]
            add(
                f"{internal_module}.weight",
                LoraPatch(f"{internal_module}.weight", down_key, down=down, up=up, scale=scale),
            )
        if "diff" in parts:
            key, tensor = parts["diff"]
            # A bare parameter (``blocks.N.modulation.diff``) or a module's weight.
            target = wan_to_internal(module) or f"{internal_module}.weight"
            add(target, LoraPatch(target, key, diff=tensor))
        if "diff_b" in parts:
            key, tensor = parts["diff_b"]
            add(f"{internal_module}.bias", LoraPatch(f"{internal_module}.bias", key, diff=tensor))
        if "alpha" in parts and "down" not in parts:
            raise CheckpointError(f"{path}: LoRA key {parts['alpha'][0]!r} has no lora_down/lora_up pair")
    if not lora.patches:
        raise CheckpointError(f"{path}: contains no LoRA tensors")
    return lora


def load_lora(path: str | Path) -> Lora:
    """Read and convert a LoRA file (Kijai/lightx2v ``.safetensors`` or official SAT ``.pt``)."""
    path = Path(path)
    tensors = _read_all(open_state_dict(path))
    if any(".lora_layer" in key for key in tensors):
        return _parse_sat(path, tensors)
    return _parse_kijai(path, tensors)


# --- fusing ---------------------------------------------------------------------------------------------------


class LoraManager:
    """What is fused into one model, and how to change it.

    ``apply({"lightx2v": (path_or_lora, 0.8), "dpo": (path, 1.0)})`` makes the fused set exactly that (a
    strength of 0 or a missing name means not fused); ``unfuse_all()`` restores the plain weights. Every LoRA is
    checked against the model before any weight changes.

    ``base_weights``: the model's checkpoint in internal key names (``model.checkpoint_state``, set by
    ``from_single_file``), used to recompute touched parameters exactly; ``None`` applies strength differences
    in float32 instead (exact for float32 weights, rounding drift of about one half-precision ulp per change
    otherwise).
    """

    def __init__(self, model: nn.Module, base_weights: LazyStateDict | None | str = "auto"):
        self.model = model
        if base_weights == "auto":
            base_weights = getattr(model, "checkpoint_state", None)
        self.base_weights: LazyStateDict | None = base_weights
        self._fused: dict[str, tuple[Lora, float]] = {}
        self._cache: dict[tuple[str, int, int], Lora] = {}

    @property
    def fused(self) -> dict[str, float]:
        """Name -> strength of every LoRA currently fused."""
        return {name: strength for name, (_, strength) in self._fused.items()}

    def _resolve(self, source: str | Path | Lora) -> Lora:
        if isinstance(source, Lora):
            return source
        path = Path(source).resolve()
        if not path.is_file():
            raise CheckpointError(f"{path}: LoRA file not found")
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != key[0]}
            self._cache[key] = load_lora(path)
        return self._cache[key]

    @torch.no_grad()
    def apply(self, loras: Mapping[str, tuple[str | Path | Lora, float]]) -> None:
        """Make the fused set exactly ``loras`` (name -> (file or parsed :class:`Lora`, strength)).

        Only parameters of LoRAs whose file or strength changed are recomputed. With base weights that means
        re-reading those parameters from the checkpoint (a few seconds to a minute for the 14B model, only when
        the set changes). Raises :class:`CheckpointError` before touching any weight if a LoRA does not fit.
        """
        wanted = {}
        for name, (source, strength) in loras.items():
            if float(strength) != 0.0:
                wanted[name] = (self._resolve(source), float(strength))
        for lora, _ in wanted.values():
            lora.check(self.model)

        changed = {
            name
            for name in set(wanted) | set(self._fused)
            if name not in wanted
            or name not in self._fused
            or wanted[name][0] is not self._fused[name][0]
            or wanted[name][1] != self._fused[name][1]
        }
        touched: set[str] = set()
        for name in changed:
            for table in (wanted, self._fused):
                if name in table:
                    touched |= table[name][0].targets

        params = dict(self.model.named_parameters())
        for target in sorted(touched):
            param = params[target]
            if self.base_weights is not None and target in self.base_weights:
                # copy=True: a checkpoint read may be a view into the file's memory map; never edit it in place.
                value = self.base_weights.read(target).to(device=param.device, dtype=torch.float32, copy=True)
                for lora, strength in wanted.values():
                    for patch in lora.patches_for(target):
                        value += strength * patch.delta(param.shape, param.device)
            else:
                value = param.detach().to(torch.float32, copy=True)
                for name in changed:
                    if name in self._fused:
                        old_lora, old_strength = self._fused[name]
                        for patch in old_lora.patches_for(target):
                            value -= old_strength * patch.delta(param.shape, param.device)
                    if name in wanted:
                        lora, strength = wanted[name]
                        for patch in lora.patches_for(target):
                            value += strength * patch.delta(param.shape, param.device)
            # Rebind rather than copy_: a loaded parameter may share memory with the checkpoint's memory map, and
            # writing into it would change what later reads of the pristine weights return.
            param.data = value.to(param.dtype)
        self._fused = wanted

    def unfuse_all(self) -> None:
        self.apply({})
