"""One motion pair as plain numbers: backgrounds, characters, camera, motions, and what each image draws.

:func:`sample_pair_scene` draws everything a pair needs from one ``numpy.random.Generator``; its three
:class:`Draw` objects (reference, driving, target) turn the scene into per-frame feature rows (:data:`PART_FEATURES`, :data:`BACKGROUND_FEATURES`) that
``training.render`` rasterises. Nothing here touches pixels or torch.

Colours are chosen so every character differs from every background colour it can stand on by at least
:data:`CONTRAST_MARGIN` in some RGB channel (after shading): a pixel of a character is then always told apart
from the background by the score's threshold (``training.evaluation``), which keeps a perfect prediction at IoU 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .motion import (
    FAR_ROLES,
    FPS,
    NUM_ROLES,
    ROLES,
    BodyPlan,
    Camera,
    Motion,
    hsv_to_rgb,
    pose,
    rest_pose,
    sample_body_plan,
    sample_motion,
)

# Plain-data performances seed numpy with [seed, 1, 1]: three words (the last non-zero: SeedSequence ignores
# trailing zeros), where pair items use two ([seed, item]), so a performance is never some pair's stream.
PERFORMANCE_STREAM = (1, 1)

# Thinner parts (tail tips at small sizes) would cover no pixel centre and leave unmasked half-drawn pixels.
MIN_RADIUS_PX = 1.0

CONTRAST_MARGIN = 0.25  # min L-infinity RGB distance between any character colour and any background colour
COLOUR_ATTEMPTS = 8
COLOUR_POOL = 64

# Per part and frame, the rasteriser's inputs (pixel units; y down).
PART_FEATURES = (
    "x0", "y0", "x1", "y1", "r0", "r1",
    "red", "green", "blue", "pattern_red", "pattern_green", "pattern_blue",
    "texture", "period", "phase", "texture_width",
    "ambient", "diffuse", "light_x", "light_y", "light_z",
    "identity", "present",
)  # fmt: skip
PART = {name: index for index, name in enumerate(PART_FEATURES)}

BLOBS = 4
WAVES = 3
# Per frame, the background field: colour = lerp(a, b, clamp(lambda)) with lambda = base + gradient . p
# + blobs + waves over world coordinates p, then the floor (world y < 0) in its own colour; plus the camera.
BACKGROUND_FEATURES = (
    ("a_red", "a_green", "a_blue", "b_red", "b_green", "b_blue", "base", "gradient_x", "gradient_y")
    + tuple(f"blob{k}_{n}" for k in range(BLOBS) for n in ("x", "y", "sigma", "weight"))
    + tuple(f"wave{k}_{n}" for k in range(WAVES) for n in ("kx", "ky", "phase", "amplitude"))
    + ("floor", "floor_red", "floor_green", "floor_blue", "zoom", "pan", "ground_row")
)
BACKGROUND = {name: index for index, name in enumerate(BACKGROUND_FEATURES)}
BACKGROUND_KINDS = ("flat", "gradient", "blobs", "waves")


@dataclass
class Background:
    """A background field over world coordinates (so camera pans and zooms move it like a scene)."""

    kind: str
    colour_a: np.ndarray
    colour_b: np.ndarray
    base: float = 0.0
    gradient: np.ndarray = field(default_factory=lambda: np.zeros(2))
    blobs: np.ndarray = field(default_factory=lambda: np.zeros((BLOBS, 4)))  # x, y, sigma, weight
    waves: np.ndarray = field(default_factory=lambda: np.zeros((WAVES, 4)))  # kx, ky, phase, amplitude
    floor: bool = False
    floor_colour: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def colour_set(self) -> np.ndarray:
        """Every colour this background can show (the field is a blend of a and b, the floor line a blend
        of the floor and the field), sampled finely enough for the contrast check."""
        lam = np.linspace(0.0, 1.0, 6)[:, None]
        field_colours = self.colour_a + lam * (self.colour_b - self.colour_a)
        if not self.floor:
            return field_colours
        edge = 0.5 * (field_colours + self.floor_colour)
        return np.concatenate([field_colours, self.floor_colour[None], edge])

    def features(self, camera: Camera) -> np.ndarray:
        """[T, len(BACKGROUND_FEATURES)] rows for the frames of ``camera``."""
        row = np.concatenate(
            [
                self.colour_a,
                self.colour_b,
                [self.base],
                self.gradient,
                self.blobs.reshape(-1),
                self.waves.reshape(-1),
                [float(self.floor)],
                self.floor_colour,
            ]
        )
        rows = np.repeat(row[None], len(camera.zoom), axis=0)
        return np.concatenate([rows, np.stack([camera.zoom, camera.pan, camera.ground_row], axis=1)], axis=1)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "colour_a": self.colour_a.tolist(),
            "colour_b": self.colour_b.tolist(),
            "base": self.base,
            "gradient": self.gradient.tolist(),
            "blobs_x_y_sigma_weight": self.blobs.tolist(),
            "waves_kx_ky_phase_amplitude": self.waves.tolist(),
            "floor": self.floor,
            "floor_colour": self.floor_colour.tolist(),
        }


def _background_colour(rng: np.random.Generator, hue: float | None = None) -> np.ndarray:
    hue = rng.uniform() if hue is None else hue % 1.0
    return hsv_to_rgb(hue, rng.uniform(0.0, 0.6), rng.uniform(0.15, 1.0))


def sample_background(rng: np.random.Generator, view_centre: np.ndarray) -> Background:
    """Flat, gradient, soft blobs or low-frequency waves, optionally with a floor below the ground line.

    ``view_centre`` is the world point at the image centre at frame 0 (where blobs and gradients are placed).
    """
    u = rng.uniform
    kind = BACKGROUND_KINDS[int(rng.choice(4, p=(0.3, 0.25, 0.25, 0.2)))]
    colour_a = _background_colour(rng)
    hue_a = float(rng.uniform())
    colour_b = _background_colour(rng, hue_a + u(-0.15, 0.15)) if u() < 0.6 else _background_colour(rng)
    background = Background(kind=kind, colour_a=colour_a, colour_b=colour_b)
    if kind == "gradient":
        angle = u(0, 2 * np.pi)
        background.gradient = np.array([np.cos(angle), np.sin(angle)]) * u(0.3, 0.6)
        background.base = 0.5 - float(background.gradient @ view_centre)
    elif kind == "blobs":
        background.base = u(0.0, 0.3)
        background.blobs[:, 0] = view_centre[0] + u(-1.5, 1.5, BLOBS)
        background.blobs[:, 1] = view_centre[1] + u(-0.8, 0.8, BLOBS)
        background.blobs[:, 2] = u(0.15, 0.5, BLOBS)
        background.blobs[:, 3] = u(0.3, 0.8, BLOBS)
    elif kind == "waves":
        background.base = 0.5
        angles = u(0, 2 * np.pi, WAVES)
        wavenumbers = 2 * np.pi / u(0.4, 1.5, WAVES)
        background.waves[:, 0] = np.cos(angles) * wavenumbers
        background.waves[:, 1] = np.sin(angles) * wavenumbers
        background.waves[:, 2] = u(0, 2 * np.pi, WAVES)
        background.waves[:, 3] = u(0.1, 0.3, WAVES)
    if u() < 0.5:
        background.floor = True
        background.floor_colour = hsv_to_rgb(u(), u(0.0, 0.5), u(0.1, 0.9))
    return background


# ----------------------------------------------------------------------------------------------- colours


def character_colour_set(plan: BodyPlan) -> np.ndarray:
    """Every colour a character's pixels can take (sampled): its colours under the whole shading range,
    and blends of two of them (anti-aliased seams between parts, pattern edges)."""
    used = [plan.colours[0]]
    if plan.present[plan.colour_index == 1].any():
        used.append(plan.colours[1])
    if plan.texture:
        used.append(plan.colours[2])
    low, high = plan.shade_range()
    shades = np.linspace(low, high, 6)[:, None]
    colours = [np.clip(c * shades, 0, 1) for c in used]
    for i in range(len(used)):
        for j in range(i + 1, len(used)):
            colours.append(np.clip(0.5 * (used[i] + used[j]) * shades, 0, 1))
    return np.concatenate(colours)


def contrast(colours: np.ndarray, others: np.ndarray) -> float:
    """Smallest L-infinity distance between two colour sets [N, 3] and [M, 3]."""
    return float(np.abs(colours[:, None] - others[None]).max(axis=-1).min())


def _colour_pool(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` random character colours [count, 3] (the same distribution as ``random_colour``)."""
    h, s, v = rng.uniform(size=count), rng.uniform(0.25, 1.0, count), rng.uniform(0.3, 1.0, count)
    sector = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    return table[sector, np.arange(count)]


def pick_colours(rng: np.random.Generator, plan: BodyPlan, backgrounds: list[Background],
                 others: list[BodyPlan] = ()) -> None:  # fmt: skip
    """Choose ``plan``'s colours so they contrast with every background and with the ``others`` characters
    of its images (identities can be told apart by colour): the plan's own colours if they do, else colours
    drawn at random among a pool's colours that keep the margin under the plan's whole shading range.
    Keeps the best attempt if none reaches the margin."""
    avoid = np.concatenate([b.colour_set() for b in backgrounds] + [character_colour_set(o) for o in others])
    same_limb_colour = np.array_equal(plan.colours[0], plan.colours[1])
    low, high = plan.shade_range()
    shades = np.linspace(low, high, 4)[None, :, None]
    best, best_score = plan.colours.copy(), contrast(character_colour_set(plan), avoid)
    for _ in range(COLOUR_ATTEMPTS):
        if best_score >= CONTRAST_MARGIN:
            break
        pool = _colour_pool(rng, COLOUR_POOL)
        shaded = np.clip(pool[:, None] * shades, 0, 1)  # [K, S, 3]
        scores = np.abs(shaded[:, :, None] - avoid[None, None]).max(-1).min(axis=(1, 2))
        good = np.flatnonzero(scores >= CONTRAST_MARGIN)
        candidates = good if good.size else np.argsort(scores)[-3:]
        plan.colours = pool[rng.choice(candidates, size=3)]
        if same_limb_colour:
            plan.colours[1] = plan.colours[0]
        score = contrast(character_colour_set(plan), avoid)
        if score > best_score:
            best, best_score = plan.colours.copy(), score
    plan.colours = best


# ------------------------------------------------------------------------------------------------ scenes


@dataclass
class Draw:
    """One image sequence of a pair: which characters perform which motions in front of which background."""

    background: Background
    camera: Camera
    plans: list[BodyPlan]  # back to front
    motions: list[Motion]
    identities: list[int]  # 1-based palette identity of each character

    def part_features(self, light: np.ndarray) -> np.ndarray:
        """[T, characters * R, len(PART_FEATURES)] rasteriser rows, characters in painter's order."""
        frames = len(self.camera.zoom)
        rows = []
        for plan, motion, identity in zip(self.plans, self.motions, self.identities, strict=True):
            start, end = pose(plan, motion)
            start_px, end_px = self.camera.to_pixels(start), self.camera.to_pixels(end)
            zoom = self.camera.zoom[:, None]
            row = np.zeros((frames, NUM_ROLES, len(PART_FEATURES)))
            row[..., PART["x0"] : PART["y0"] + 1] = start_px
            row[..., PART["x1"] : PART["y1"] + 1] = end_px
            row[..., PART["r0"]], row[..., PART["r1"]] = pixel_radii(plan, self.camera.zoom)
            row[..., PART["red"] : PART["blue"] + 1] = plan.colours[plan.colour_index][None]
            row[..., PART["pattern_red"] : PART["pattern_blue"] + 1] = plan.colours[2]
            row[..., PART["texture"]] = np.where(plan.textured, plan.texture, 0)[None]
            row[..., PART["period"]] = plan.texture_period * zoom
            row[..., PART["phase"]] = plan.texture_phase
            row[..., PART["texture_width"]] = plan.texture_width
            far = np.array([plan.far_shade if role in FAR_ROLES else 1.0 for role in ROLES])
            row[..., PART["ambient"]] = plan.ambient * far[None]
            row[..., PART["diffuse"]] = plan.diffuse * far[None]
            row[..., PART["light_x"] : PART["light_z"] + 1] = light
            row[..., PART["identity"]] = identity
            row[..., PART["present"]] = plan.present[None]
            rows.append(row)
        if not rows:
            return np.zeros((frames, 0, len(PART_FEATURES)))
        return np.concatenate(rows, axis=1)

    def background_features(self) -> np.ndarray:
        return self.background.features(self.camera)


@dataclass
class PairScene:
    """Everything one motion pair draws. ``reference`` is one frame; ``driving`` and ``target`` are T frames."""

    mode: str
    reference: Draw
    driving: Draw
    target: Draw
    light: np.ndarray  # [3] unit light direction in pixel space (x right, y down, z towards the viewer)

    def to_dict(self) -> dict:
        """Plain data: the characters, motions (as world-space joint positions) and backgrounds."""
        return {
            "mode": self.mode,
            "light": self.light.tolist(),
            "reference": describe_draw(self.reference),
            "driving": describe_draw(self.driving),
            "target": describe_draw(self.target),
        }


def pixel_radii(plan: BodyPlan, zoom: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Part radii in pixels [T, R] at the camera's ``zoom`` [T], at least :data:`MIN_RADIUS_PX`."""
    return (
        np.maximum(plan.radius_start[None] * zoom[:, None], MIN_RADIUS_PX),
        np.maximum(plan.radius_end[None] * zoom[:, None], MIN_RADIUS_PX),
    )


def _part_frames(plan: BodyPlan, start: np.ndarray, end: np.ndarray, radius_start: np.ndarray,
                 radius_end: np.ndarray) -> list[dict]:  # fmt: skip
    """Per frame, per present role: endpoints [T, R, 2] and radii [T, R]."""
    return [
        {
            role: {
                "start": [float(v) for v in start[t, k]],
                "end": [float(v) for v in end[t, k]],
                "radius_start": float(radius_start[t, k]),
                "radius_end": float(radius_end[t, k]),
            }
            for k, role in enumerate(ROLES)
            if plan.present[k]
        }
        for t in range(start.shape[0])
    ]


def describe_draw(draw: Draw) -> dict:
    """A draw as plain data: per character its body plan and, per frame, its part endpoints both in pixels
    (x right, y down, pixel centres at +0.5) and in world units (y up, ground at 0)."""
    characters = []
    for plan, motion, identity in zip(draw.plans, draw.motions, draw.identities, strict=True):
        start, end = pose(plan, motion)
        start_px, end_px = draw.camera.to_pixels(start), draw.camera.to_pixels(end)
        characters.append(
            {
                "identity": identity,
                "body_plan": plan.to_dict(),
                "facing": motion.facing.tolist(),
                "frames_px": _part_frames(plan, start_px, end_px, *pixel_radii(plan, draw.camera.zoom)),
                "frames_world": _part_frames(plan, start, end, *(np.broadcast_to(r, start.shape[:2])
                                                                  for r in (plan.radius_start, plan.radius_end))),
            }
        )
    return {
        "background": draw.background.to_dict(),
        "camera": {
            "zoom_px_per_unit": draw.camera.zoom.tolist(),
            "pan_world_x": draw.camera.pan.tolist(),
            "ground_row_px": draw.camera.ground_row.tolist(),
            "width": draw.camera.width,
            "height": draw.camera.height,
        },
        "characters": characters,  # back to front
    }


def sample_performance(seed: int, *, frames: int = 33, size: tuple[int, int] = (128, 128),
                       kind: str | None = None, flat_background: bool = True) -> dict:  # fmt: skip
    """One random character performing one random motion, as plain data (``describe_draw`` plus the seed and
    the light), e.g. to build and animate the same character from primitives in Blender. ``kind``: "biped",
    "quadruped" or None (random); ``flat_background`` keeps the background one solid colour."""
    height, width = size
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), *PERFORMANCE_STREAM]))
    plan = sample_body_plan(rng, kind)
    motion = sample_motion(rng, frames)
    camera = _sample_camera(rng, 1, frames, width, height, [motion])
    background = sample_background(rng, np.array([0.0, (camera.ground_row[0] - height / 2) / camera.zoom[0]]))
    if flat_background:
        background = Background(kind="flat", colour_a=background.colour_a, colour_b=background.colour_a,
                                floor=background.floor, floor_colour=background.floor_colour)  # fmt: skip
    pick_colours(rng, plan, [background])
    light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.8, -0.2), rng.uniform(0.4, 1.0)])
    light /= np.linalg.norm(light)
    motion.root_x = motion.root_x + (rng.uniform(0.35, 0.65) - 0.5) * width / camera.zoom[0]
    description = describe_draw(Draw(background, camera, [plan], [motion], [1]))
    return {"seed": int(seed), "frames": frames, "fps": FPS, "light": light.tolist(), **description}


def _sample_camera(rng: np.random.Generator, characters: int, frames: int, width: int, height: int,
                   motions: list[Motion]) -> Camera:  # fmt: skip
    u = rng.uniform
    zoom0 = height * (u(0.55, 0.72) if characters == 1 else u(0.4, 0.5))
    ground0 = height * u(0.8, 0.93)
    progress = np.arange(frames) / max(frames - 1, 1)
    zooms, follows, drifts = u() < 0.3, u() < 0.5, u() < 0.2
    rate, follow, drift = u(-0.15, 0.15), u(0.5, 1.0), u(-0.005, 0.005)
    zoom = zoom0 * (1.0 + (rate if zooms else 0.0) * progress)
    if follows:
        centre = np.mean([m.root_x for m in motions], axis=0)
        pan = follow * (centre - centre[0])
    elif drifts:
        pan = drift * np.arange(frames, dtype=np.float64)
    else:
        pan = np.zeros(frames)
    # Zoom about the image centre: the ground row moves towards or away from it.
    ground = height / 2 + (ground0 - height / 2) * zoom / zoom0
    return Camera(zoom=zoom, pan=pan, ground_row=ground, width=width, height=height)


def _screen_slots(rng: np.random.Generator, characters: int) -> list[float]:
    """Horizontal screen fractions, left to right: one centred-ish, or one per half."""
    if characters == 1:
        return [rng.uniform(0.35, 0.65)]
    return [rng.uniform(0.2, 0.38), rng.uniform(0.62, 0.8)]


def _reference_pose(rng: np.random.Generator, frames: int) -> Motion:
    """A pose independent of the pair's motion: the rest pose or a random frame of another random motion."""
    other = sample_motion(rng, frames)
    use_rest, frame, facing = rng.uniform() < 0.3, int(rng.integers(frames)), 1.0 if rng.uniform() < 0.5 else -1.0
    single = rest_pose(1) if use_rest else other.at(frame)
    single.root_x = np.zeros(1)
    single.jump = np.zeros(1)
    single.facing = np.full(1, facing)
    return single


def sample_pair_scene(rng: np.random.Generator, *, mode: str, characters: int, frames: int, width: int,
                      height: int) -> PairScene:  # fmt: skip
    """One motion pair: characters A (reference, target) and B (driving), motions M, backgrounds, camera.

    Identities are numbered left to right in the reference (SCAIL-2's convention); driving character k is
    the one whose motion target character k performs, and it starts on the same side.
    """
    if mode not in ("animation", "replacement"):
        raise ValueError(f"mode must be 'animation' or 'replacement', not {mode!r}")
    if characters not in (1, 2):
        raise ValueError(f"characters must be 1 or 2, not {characters!r}")
    plans_a = [sample_body_plan(rng) for _ in range(characters)]
    plans_b = [sample_body_plan(rng) for _ in range(characters)]
    motions = [sample_motion(rng, frames) for _ in range(characters)]
    reference_poses = [_reference_pose(rng, frames) for _ in range(characters)]
    drive_slots = _screen_slots(rng, characters)
    reference_slots = _screen_slots(rng, characters)
    camera = _sample_camera(rng, characters, frames, width, height, motions)
    view_centre = np.array([0.0, (camera.ground_row[0] - height / 2) / camera.zoom[0]])
    reference_background = sample_background(rng, view_centre)
    driving_background = sample_background(rng, view_centre)
    # A is seen on the reference background (and, replacing B, on B's); B only on its own.
    a_backgrounds = [reference_background] + ([driving_background] if mode == "replacement" else [])
    for group, backgrounds in ((plans_a, a_backgrounds), (plans_b, [driving_background])):
        for k, plan in enumerate(group):
            pick_colours(rng, plan, backgrounds, others=group[:k])
    order = [0, 1] if characters == 1 or rng.uniform() < 0.5 else [1, 0]  # back to front
    order = order[:characters]
    light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.8, -0.2), rng.uniform(0.4, 1.0)])
    light /= np.linalg.norm(light)

    camera0 = camera.at(0)
    to_world = width / camera.zoom[0]
    for motion, slot in zip(motions, drive_slots, strict=True):
        motion.root_x = motion.root_x + (slot - 0.5) * to_world
    for single, slot in zip(reference_poses, reference_slots, strict=True):
        single.root_x = np.array([(slot - 0.5) * to_world])

    def draw(background: Background, cam: Camera, plans: list[BodyPlan], moves: list[Motion]) -> Draw:
        return Draw(background, cam, [plans[k] for k in order], [moves[k] for k in order], [k + 1 for k in order])

    target_background = reference_background if mode == "animation" else driving_background
    return PairScene(
        mode=mode,
        reference=draw(reference_background, camera0, plans_a, reference_poses),
        driving=draw(driving_background, camera, plans_b, motions),
        target=draw(target_background, camera, plans_a, motions),
        light=light,
    )


def item_seed(seed: int, index: int) -> np.random.SeedSequence:
    """The random stream of item ``index`` of the batch made with ``seed`` (independent of the batch size)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return np.random.SeedSequence([int(seed), int(index)])

