"""What the artist can choose for automatic masks: prompts, identity count, size filter, colour overrides."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from backend.scail2.conditioning.masks import Mode
from backend.scail2.errors import Scail2InputError

from .tracking import DEFAULT_MAX_IDENTITIES, MIN_AREA_FRACTION, parse_colour

# The official preprocessing prompts SAM3 with "human" and "character"; "person" is SAM3's own word for humans.
DEFAULT_PROMPTS: tuple[str, ...] = ("person", "character")


def parse_prompts(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"person, character, cat"`` or a list -> distinct non-empty prompts in order; empty -> the defaults."""
    if text is None:
        return DEFAULT_PROMPTS
    parts = text.split(",") if isinstance(text, str) else [p for item in text for p in str(item).split(",")]
    prompts: list[str] = []
    for part in parts:
        prompt = " ".join(part.split())
        if prompt and prompt.lower() not in (p.lower() for p in prompts):
            prompts.append(prompt)
    return tuple(prompts) or DEFAULT_PROMPTS


@dataclass(frozen=True)
class MaskSettings:
    """How automatic masks are made for one job (the same settings serve the reference and the driving clip)."""

    mode: Mode
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    max_identities: int | None = None  # None: 2 for animation, 1 for replacement
    min_area_fraction: float = MIN_AREA_FRACTION
    colours: tuple[int, ...] = ()  # palette index per left-to-right identity; empty: blue, red, green ...
    detection_threshold: float | None = None  # None: the SAM3 checkpoint's own thresholds

    def __post_init__(self) -> None:
        if self.mode not in DEFAULT_MAX_IDENTITIES:
            raise Scail2InputError(
                f"mode must be 'animation' or 'replacement', got {self.mode!r}", field="mode"
            )
        if self.max_identities is not None and not 1 <= self.max_identities <= 6:
            raise Scail2InputError(
                f"max_identities must be 1-6, got {self.max_identities}", field="max_identities"
            )
        if not 0.0 <= self.min_area_fraction < 1.0:
            raise Scail2InputError(
                f"min_area_fraction must be in [0, 1), got {self.min_area_fraction}",
                field="min_area_fraction",
            )
        if self.detection_threshold is not None and not 0.0 <= self.detection_threshold <= 1.0:
            raise Scail2InputError(
                f"detection_threshold must be in [0, 1], got {self.detection_threshold}",
                field="detection_threshold",
            )
        if not self.prompts:
            raise Scail2InputError("at least one text prompt is needed (e.g. 'person')", field="prompts")

    @property
    def identity_limit(self) -> int:
        return DEFAULT_MAX_IDENTITIES[self.mode] if self.max_identities is None else self.max_identities

    @classmethod
    def build(
        cls,
        mode: Mode,
        prompts: str | Sequence[str] | None = None,
        max_identities: int | None = None,
        colours: str | Sequence[int | str] | None = None,
        min_area_fraction: float = MIN_AREA_FRACTION,
        detection_threshold: float | None = None,
    ) -> MaskSettings:
        """Settings from loose user input (comma-separated prompts and colours, colour names or indices)."""
        if isinstance(colours, str):
            colours = [c for c in colours.split(",") if c.strip()]
        try:
            parsed = tuple(parse_colour(c) for c in (colours or ()))
        except ValueError as exc:
            raise Scail2InputError(str(exc), field="mask_colours") from exc
        if len(set(parsed)) != len(parsed):
            raise Scail2InputError(
                f"mask colours must be distinct, got {list(colours or ())}", field="mask_colours"
            )
        return cls(
            mode, parse_prompts(prompts), max_identities, min_area_fraction, parsed, detection_threshold
        )
