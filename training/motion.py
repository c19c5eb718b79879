"""Body plans, motions and forward kinematics of the procedural characters (numpy; no pixels here).

A character is a kinematic tree of capsules ("parts") seen from the side, facing +x in its own frame. Every part
plays a named ROLE; the same role list serves two-legged and four-legged plans, so a motion recorded on one plan
can drive any other (retargeting):

* a :class:`BodyPlan` says which roles a character has, each part's length and radii (world units, the
  character about one unit tall), its rest angle and its colours;
* a :class:`Motion` is one angle trajectory per role (radians, added to the plan's rest angle; for the lower
  limbs a flexion amount that the plan turns into the direction its joints bend) plus a root trajectory:
  horizontal position (world units), jump height (fraction of the performer's own height), body pitch and
  facing (+1 right, -1 left: a turn is a mirror);
* :func:`pose` combines the two: roles the plan lacks are ignored, lengths come from the plan, angles from the
  motion, and the lowest point of the character is put on the ground line (world y = 0) plus the jump, so two
  characters performing one motion stand on the same ground wherever either would.

World units map to pixels through a :class:`Camera` (zoom, pan, ground row), shared by every character of a
scene. Everything is sampled from a ``numpy.random.Generator`` the caller seeds; see ``training.pairs``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Painter's order, back to front: far-side limbs behind the body, near-side limbs in front of it. "left" is the
# near side (towards the camera), "right" the far side; a turn mirrors the character, so the near side stays
# near. Biped "front" limbs are arms; quadruped "front" limbs are forelegs.
ROLES: tuple[str, ...] = (
    "back_right_upper",
    "back_right_lower",
    "front_right_upper",
    "front_right_lower",
    "tail_base",
    "tail_tip",
    "spine",
    "neck",
    "head",
    "back_left_upper",
    "back_left_lower",
    "front_left_upper",
    "front_left_lower",
)
ROLE_INDEX = {name: index for index, name in enumerate(ROLES)}
NUM_ROLES = len(ROLES)
KINDS = ("biped", "quadruped")

LIMBS = ("back_right", "back_left", "front_right", "front_left")
FAR_ROLES = frozenset(role for role in ROLES if "_right_" in role)
UPPER_ROLES = tuple(f"{limb}_upper" for limb in LIMBS)
LOWER_ROLES = tuple(f"{limb}_lower" for limb in LIMBS)
# Roles that may carry the character's texture (stripes or dots): the big parts.
TEXTURED_ROLES = frozenset({"spine", "tail_base", "tail_tip", "neck", *UPPER_ROLES})

# Where each part starts: (parent role or "root", fraction along the parent). Identical for both kinds; what
# differs is the rest angles and lengths (and, for bipeds, that the arms hang from the shoulders).
PARENT: dict[str, tuple[str, float]] = {
    "spine": ("root", 0.0),
    "neck": ("spine", 1.0),
    "head": ("neck", 1.0),
    "tail_base": ("root", 0.0),
    "tail_tip": ("tail_base", 1.0),
    "back_right_upper": ("root", 0.0),
    "back_left_upper": ("root", 0.0),
    "front_right_upper": ("spine", 1.0),
    "front_left_upper": ("spine", 1.0),
    "back_right_lower": ("back_right_upper", 1.0),
    "back_left_lower": ("back_left_upper", 1.0),
    "front_right_lower": ("front_right_upper", 1.0),
    "front_left_lower": ("front_left_upper", 1.0),
}
# The order in which forward kinematics visits the roles (parents first).
FK_ORDER: tuple[str, ...] = (
    "spine",
    "neck",
    "head",
    "tail_base",
    "tail_tip",
    *UPPER_ROLES,
    *LOWER_ROLES,
)

FPS = 16.0
MAX_TRAVEL = 0.8  # world units a root may cover in one clip, whatever its length  # the frame rate the motions are designed for (gait periods below are in frames at this rate)


def _deg(value: float | np.ndarray) -> float | np.ndarray:
    return np.deg2rad(value)


@dataclass
class BodyPlan:
    """One character's skeleton, shape and look. Arrays are indexed by role (``ROLES``)."""

    kind: str  # "biped" | "quadruped"
    present: np.ndarray  # [R] bool
    length: np.ndarray  # [R] world units
    radius_start: np.ndarray  # [R] world units, at the part's start
    radius_end: np.ndarray  # [R] world units, at its end (parts taper linearly)
    rest: np.ndarray  # [R] radians: rest angle relative to the parent (world for legs, see ``world_angle``)
    world_angle: np.ndarray  # [R] bool: the rest angle is absolute (legs), not relative to the parent
    flex_sign: np.ndarray  # [R] +1/-1: direction a joint bends for a positive flexion (lower limbs)
    root_angle: float  # radians: the spine's base direction (biped: up, quadruped: forward)
    attach: np.ndarray  # [R] fraction along the parent where the part starts (biped arms: the shoulders)
    colours: np.ndarray  # [3, 3] RGB in [0, 1]: body, limbs, pattern
    colour_index: np.ndarray  # [R] int: which of ``colours`` a part uses (0 body, 1 limbs)
    texture: int  # 0 none, 1 stripes, 2 dots (pattern colour on the textured roles)
    texture_period: float  # world units
    texture_phase: float  # fraction of a period
    texture_width: float  # stripes: threshold in [-0.4, 0.4]; dots: radius as a fraction of the period
    textured: np.ndarray  # [R] bool
    ambient: float  # shading: colour * (ambient + diffuse * max(0, normal . light))
    diffuse: float
    far_shade: float  # far-side parts are darkened by this factor
    height: float  # world units, rest pose, including radii
    centre_x: float  # world x of the rest pose's horizontal centre (root at 0): the point placed at root_x

    def shade_range(self) -> tuple[float, float]:
        """The smallest and largest brightness factor a pixel of this character can get."""
        return self.ambient * self.far_shade, self.ambient + self.diffuse

    def to_dict(self) -> dict:
        """Plain data (JSON-serialisable), e.g. for building the same character in Blender."""
        parts = []
        for index, role in enumerate(ROLES):
            parent, fraction = PARENT[role]
            parts.append(
                {
                    "role": role,
                    "present": bool(self.present[index]),
                    "parent": parent,
                    "attach_fraction": float(self.attach[index] if parent != "root" else fraction),
                    "length": float(self.length[index]),
                    "radius_start": float(self.radius_start[index]),
                    "radius_end": float(self.radius_end[index]),
                    "rest_angle_deg": float(np.rad2deg(self.rest[index])),
                    "rest_angle_is_world": bool(self.world_angle[index]),
                    "flex_sign": int(self.flex_sign[index]),
                    "colour": [float(c) for c in self.colours[self.colour_index[index]]],
                    "far_side": role in FAR_ROLES,
                    "textured": bool(self.textured[index] and self.texture),
                }
            )
        return {
            "kind": self.kind,
            "height": float(self.height),
            "centre_x": float(self.centre_x),
            "root_angle_deg": float(np.rad2deg(self.root_angle)),
            "colours": {
                "body": [float(c) for c in self.colours[0]],
                "limbs": [float(c) for c in self.colours[1]],
                "pattern": [float(c) for c in self.colours[2]],
            },
            "texture": ("none", "stripes", "dots")[self.texture],
            "texture_period": float(self.texture_period),
            "texture_phase": float(self.texture_phase),
            "texture_width": float(self.texture_width),
            "shading": {"ambient": self.ambient, "diffuse": self.diffuse, "far_side_factor": self.far_shade},
            "parts": parts,
        }


@dataclass
class Motion:
    """Joint-angle trajectories over roles plus a root trajectory, ``T`` frames. Plan independent."""

    angles: np.ndarray  # [T, R] radians (lower limbs: flexion >= 0)
    root_x: np.ndarray  # [T] world units
    jump: np.ndarray  # [T] >= 0, fraction of the performer's height
    pitch: np.ndarray  # [T] radians, added to the root angle
    facing: np.ndarray  # [T] +1 or -1

    @property
    def frames(self) -> int:
        return int(self.angles.shape[0])

    def at(self, frame: int) -> Motion:
        """A one-frame motion: this motion's pose at ``frame``."""
        keep = slice(frame, frame + 1)
        return Motion(self.angles[keep], self.root_x[keep], self.jump[keep], self.pitch[keep], self.facing[keep])


@dataclass
class Camera:
    """World to pixels, per frame: ``x_px = W/2 + (x - pan) * zoom``, ``y_px = ground_row - y * zoom``."""

    zoom: np.ndarray  # [T] pixels per world unit
    pan: np.ndarray  # [T] world x at the image centre
    ground_row: np.ndarray  # [T] pixel row of world y = 0
    width: int
    height: int

    def at(self, frame: int) -> Camera:
        keep = slice(frame, frame + 1)
        return Camera(self.zoom[keep], self.pan[keep], self.ground_row[keep], self.width, self.height)

    def to_pixels(self, points: np.ndarray) -> np.ndarray:
        """[T, ..., 2] world points -> pixel coordinates (x right, y down; pixel centres at integers)."""
        extra = (slice(None),) + (None,) * (points.ndim - 2)
        x = self.width / 2 + (points[..., 0] - self.pan[extra]) * self.zoom[extra]
        y = self.ground_row[extra] - points[..., 1] * self.zoom[extra]
        return np.stack([x, y], axis=-1)


# ---------------------------------------------------------------------------------------------- body plans


def hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], dtype=np.float64)


def random_colour(rng: np.random.Generator) -> np.ndarray:
    return hsv_to_rgb(rng.uniform(), rng.uniform(0.25, 1.0), rng.uniform(0.3, 1.0))


def sample_body_plan(rng: np.random.Generator, kind: str | None = None) -> BodyPlan:
    """A random two- or four-legged character, normalised to about one world unit tall (see README ranges)."""
    if kind is None:
        kind = KINDS[int(rng.integers(2))]
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    u = rng.uniform
    R = NUM_ROLES
    present = np.zeros(R, dtype=bool)
    length = np.zeros(R)
    r0 = np.zeros(R)
    r1 = np.zeros(R)
    rest = np.zeros(R)
    world = np.zeros(R, dtype=bool)
    flex = np.ones(R)
    attach = np.ones(R)
    i = ROLE_INDEX

    def part(role: str, size: float, radius: float, taper: float, angle_deg: float) -> None:
        k = i[role]
        present[k] = True
        length[k], r0[k], r1[k], rest[k] = size, radius, radius * taper, _deg(angle_deg)

    if kind == "biped":
        root_angle = _deg(90.0)
        part("spine", u(0.28, 0.42), u(0.07, 0.13), u(0.8, 1.3), u(-6, 6))
        has_head = u() < 0.9
        has_arms = u() < 0.85
        has_tail = u() < 0.3
        leg, leg_r = u(0.2, 0.3), u(0.045, 0.08)
        leg_ratio, leg_taper = u(0.8, 1.15), u(0.7, 1.0)
        for side in ("left", "right"):
            part(f"back_{side}_upper", leg, leg_r, leg_taper, -90 + u(-4, 4))
            part(f"back_{side}_lower", leg * leg_ratio, leg_r * leg_taper, u(0.8, 1.1), -u(0, 10))
            world[i[f"back_{side}_upper"]] = True
            flex[i[f"back_{side}_lower"]] = -1.0  # knees bend backwards
        if has_arms:
            arm, arm_r = u(0.14, 0.24), u(0.035, 0.06)
            arm_ratio, arm_taper = u(0.8, 1.2), u(0.75, 1.0)
            shoulder = u(0.8, 0.95)
            for side in ("left", "right"):
                part(f"front_{side}_upper", arm, arm_r, arm_taper, 180 + u(0, 20))
                part(f"front_{side}_lower", arm * arm_ratio, arm_r * arm_taper, u(0.8, 1.2), u(0, 30))
                attach[i[f"front_{side}_upper"]] = shoulder
                flex[i[f"front_{side}_lower"]] = 1.0  # elbows bend forwards
        if has_head:
            part("neck", u(0.03, 0.1), u(0.03, 0.05), u(0.9, 1.0), u(-20, 0))
            part("head", u(0.0, 0.08), u(0.08, 0.12), u(0.8, 1.1), u(-30, 10))
        tail_rest = (u(120, 160), u(-40, 40))
    else:
        root_angle = 0.0
        part("spine", u(0.4, 0.65), u(0.09, 0.15), u(0.85, 1.25), u(-5, 10))
        has_head = u() < 0.95
        has_tail = u() < 0.7
        for limb, rest_upper, rest_lower in (("back", (0, 15), (10, 35)), ("front", (-10, 5), (-10, 10))):
            leg, leg_r = u(0.13, 0.25), u(0.04, 0.07)
            leg_ratio, leg_taper = u(0.8, 1.3), u(0.6, 0.9)
            upper_angle, lower_angle = -90 + u(*rest_upper), -u(*rest_lower)
            for side in ("left", "right"):
                part(f"{limb}_{side}_upper", leg, leg_r, leg_taper, upper_angle)
                part(f"{limb}_{side}_lower", leg * leg_ratio, leg_r * leg_taper, u(0.8, 1.1), lower_angle)
                world[i[f"{limb}_{side}_upper"]] = True
                flex[i[f"{limb}_{side}_lower"]] = -1.0
        if has_head:
            part("neck", u(0.1, 0.25), u(0.05, 0.09), u(0.7, 1.0), u(30, 70))
            part("head", u(0.05, 0.16), u(0.07, 0.11), u(0.5, 0.9), u(-100, -50))
        tail_rest = (u(150, 200), u(-40, 40))
    if has_tail:
        tail, tail_r = u(0.12, 0.3), u(0.025, 0.05)
        part("tail_base", tail, tail_r, u(0.7, 0.9), tail_rest[0])
        part("tail_tip", tail * u(0.6, 1.1), r1[i["tail_base"]], u(0.4, 0.8), tail_rest[1])

    texture = int(rng.choice(3, p=(0.5, 0.25, 0.25)))
    flat = u() < 0.3
    plan = BodyPlan(
        kind=kind,
        present=present,
        length=length,
        radius_start=r0,
        radius_end=r1,
        rest=rest,
        world_angle=world,
        flex_sign=flex,
        root_angle=float(root_angle),
        attach=attach,
        colours=np.stack([random_colour(rng) for _ in range(3)]),
        colour_index=np.zeros(R, dtype=np.int64),
        texture=texture,
        texture_period=u(0.06, 0.14),
        texture_phase=u(),
        texture_width=u(-0.3, 0.3) if texture == 1 else u(0.18, 0.32),
        textured=np.array([role in TEXTURED_ROLES for role in ROLES]),
        ambient=1.0 if flat else u(0.65, 0.85),
        diffuse=0.0 if flat else u(0.15, 0.3),
        far_shade=u(0.8, 0.9),
        height=1.0,
        centre_x=0.0,
    )
    if u() < 0.5:  # limbs in a second colour ("clothes"), else the body colour
        plan.colour_index[[i[role] for role in (*UPPER_ROLES, *LOWER_ROLES)]] = 1
    else:
        plan.colours[1] = plan.colours[0]
    # Normalise the size: the larger of height and 0.75 * length becomes 0.85 .. 1.1 units.
    rest_motion = rest_pose(1)
    start, end = forward_kinematics(plan, rest_motion)
    radii = np.concatenate([plan.radius_start, plan.radius_end])[None]
    points = np.concatenate([start, end], axis=1)
    keep = np.concatenate([plan.present, plan.present])
    xs, ys, rs = points[0, keep, 0], points[0, keep, 1], radii[0, keep]
    height = (ys + rs).max() - (ys - rs).min()
    extent = (xs + rs).max() - (xs - rs).min()
    scale = u(0.85, 1.1) / max(height, 0.75 * extent)
    plan.length *= scale
    plan.radius_start *= scale
    plan.radius_end *= scale
    plan.texture_period *= scale
    plan.height = float(height * scale)
    plan.centre_x = float(((xs + rs).max() + (xs - rs).min()) / 2 * scale)
    return plan


# ----------------------------------------------------------------------------------------------- motions


def rest_pose(frames: int) -> Motion:
    """Every role at its rest angle, standing still at x = 0, facing right."""
    return Motion(
        angles=np.zeros((frames, NUM_ROLES)),
        root_x=np.zeros(frames),
        jump=np.zeros(frames),
        pitch=np.zeros(frames),
        facing=np.ones(frames),
    )


# Amplitude (degrees) of the smooth random wiggle per role, on top of any gait.
_NOISE_DEG = {"spine": 8, "neck": 15, "head": 15, "tail_base": 25, "tail_tip": 35}


def _smooth_noise(rng: np.random.Generator, t: np.ndarray, amplitude: float, terms: int = 3) -> np.ndarray:
    """A sum of sinusoids with random periods (8..48 frames) and phases, peak about ``amplitude``."""
    out = np.zeros_like(t)
    weights = rng.uniform(0.3, 1.0, terms)
    weights *= amplitude / weights.sum()
    for weight in weights:
        period = rng.uniform(8.0, 48.0)
        out += weight * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    return out


def sample_motion(rng: np.random.Generator, frames: int) -> Motion:
    """A random plan-independent motion: a gait (walk/trot, in place or travelling) or idle wiggling, with
    optional hops and one optional turn. ``root_x`` is centred on 0 over the clip; callers shift it."""
    u = rng.uniform
    t = np.arange(frames, dtype=np.float64)
    angles = np.zeros((frames, NUM_ROLES))
    walking = u() < 0.6
    period = u(10.0, 24.0)
    phase = 2 * np.pi * t / period + u(0, 2 * np.pi)
    swing = _deg(u(15, 40)) if walking else _deg(u(0, 10))
    flex_amp = _deg(u(10, 55)) if walking else _deg(u(0, 20))
    front_offset = float(rng.choice([np.pi, np.pi / 2]))
    limb_offsets = {
        "back_left": 0.0,
        "back_right": np.pi,
        "front_left": front_offset,
        "front_right": front_offset + np.pi,
    }
    idle_limb = _deg(u(10, 40)) if not walking else _deg(u(0, 10))
    for limb, offset in limb_offsets.items():
        angles[:, ROLE_INDEX[f"{limb}_upper"]] = swing * np.sin(phase + offset) + _smooth_noise(rng, t, idle_limb)
        gait_flex = flex_amp * (0.5 + 0.5 * np.sin(phase + offset + np.pi / 2))
        angles[:, ROLE_INDEX[f"{limb}_lower"]] = np.clip(
            gait_flex + np.abs(_smooth_noise(rng, t, idle_limb)), 0, _deg(100)
        )
    for role, amplitude in _NOISE_DEG.items():
        angles[:, ROLE_INDEX[role]] = _smooth_noise(rng, t, _deg(amplitude) * u(0.3, 1.0))
    wag = _deg(u(5, 20)) if u() < 0.5 else 0.0  # tails often wag with the gait
    angles[:, ROLE_INDEX["tail_base"]] += wag * np.sin(phase)

    facing = np.full(frames, 1.0 if u() < 0.5 else -1.0)
    turns, turn_at = u() < 0.25, u(0.3, 0.7)  # both drawn always: the random stream ignores ``frames``
    if turns and frames > 2:
        facing[int(round(turn_at * (frames - 1))) :] *= -1
    speed = u(0.25, 0.6) / period if walking else u(-0.004, 0.004)
    velocity = speed * facing if walking else np.full(frames, speed)
    root_x = np.concatenate([[0.0], np.cumsum(velocity[1:])])
    travel = np.ptp(root_x)
    if travel > MAX_TRAVEL:  # long clips: keep the performer on screen (the camera may follow as well)
        root_x *= MAX_TRAVEL / travel
    root_x -= root_x.mean()

    jump = np.zeros(frames)
    if walking:
        jump += u(0.0, 0.04) * np.abs(np.sin(phase))
    if u() < 0.2:
        hop_period = u(12.0, 30.0)
        jump += u(0.08, 0.3) * np.maximum(0.0, np.sin(2 * np.pi * t / hop_period + u(0, 2 * np.pi)))
    pitch = _smooth_noise(rng, t, _deg(u(0, 6)))
    return Motion(angles=angles, root_x=root_x, jump=jump, pitch=pitch, facing=facing)


# ---------------------------------------------------------------------------------------- kinematics


def forward_kinematics(plan: BodyPlan, motion: Motion) -> tuple[np.ndarray, np.ndarray]:
    """Part start and end points [T, R, 2] in world units, before the root placement (root at 0, facing +x,
    no pitch applied to the legs; see ``pose``)."""
    frames = motion.frames
    start = np.zeros((frames, NUM_ROLES, 2))
    end = np.zeros((frames, NUM_ROLES, 2))
    angle = np.zeros((frames, NUM_ROLES))
    root_angle = plan.root_angle + motion.pitch
    for role in FK_ORDER:
        k = ROLE_INDEX[role]
        parent, _ = PARENT[role]
        delta = motion.angles[:, k] * plan.flex_sign[k]
        if parent == "root":
            origin = np.zeros((frames, 2))
            base = np.zeros(frames) if plan.world_angle[k] else root_angle
        else:
            p = ROLE_INDEX[parent]
            fraction = plan.attach[k]
            origin = start[:, p] + fraction * (end[:, p] - start[:, p])
            base = np.zeros(frames) if plan.world_angle[k] else angle[:, p]
        angle[:, k] = base + plan.rest[k] + delta
        start[:, k] = origin
        end[:, k] = origin + plan.length[k] * np.stack([np.cos(angle[:, k]), np.sin(angle[:, k])], axis=-1)
    return start, end


def pose(plan: BodyPlan, motion: Motion, x_offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """World-space part endpoints [T, R, 2] of ``plan`` performing ``motion``, standing on y = 0.

    The character's rest-pose centre (``plan.centre_x``, so a quadruped's middle rather than its hips) goes to
    ``motion.root_x + x_offset``; the character is mirrored where ``facing`` is -1; its lowest point (over the parts it has, radii included) is at ``jump * plan.height`` above the ground.
    """
    start, end = forward_kinematics(plan, motion)
    mirror = motion.facing[:, None]
    for points in (start, end):
        points[..., 0] = (points[..., 0] - plan.centre_x) * mirror + (motion.root_x + x_offset)[:, None]
    present = plan.present
    lowest = np.minimum(
        (start[:, present, 1] - plan.radius_start[present]).min(axis=1),
        (end[:, present, 1] - plan.radius_end[present]).min(axis=1),
    )
    lift = motion.jump * plan.height - lowest
    start[..., 1] += lift[:, None]
    end[..., 1] += lift[:, None]
    return start, end
