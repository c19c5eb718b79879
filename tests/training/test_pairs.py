"""The motion-pair generator: shapes, determinism, exact masks, palette polarity, seed splits, retargeting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.palette import PALETTE
from training import (
    HELDOUT_SEEDS,
    HELDOUT_SETTINGS,
    TRAIN_SEEDS,
    generate_pairs,
    heldout_pairs,
    palette_masks,
    seed_split,
)
from training.motion import ROLE_INDEX, ROLES, sample_body_plan, sample_motion
from training.motion import pose as pose_world
from training.scene import CONTRAST_MARGIN, item_seed, pixel_radii, sample_pair_scene

SIZE = (64, 64)  # the fixtures' size and length (conftest.py)
FRAMES = 9


def _tensors(batch):
    return {
        name: getattr(batch, name)
        for name in ("reference", "reference_ids", "driving", "driving_ids", "target", "target_ids",
                     "target_background")
    }  # fmt: skip


@pytest.mark.parametrize("fixture", ["animation_batch", "replacement_batch", "two_character_batch"])
def test_shapes_dtypes_and_ranges(fixture, request):
    batch = request.getfixturevalue(fixture)
    height, width = SIZE
    assert batch.reference.shape == (3, 3, height, width)
    assert batch.reference_ids.shape == (3, height, width)
    for name in ("driving", "target", "target_background"):
        assert getattr(batch, name).shape == (3, FRAMES, 3, height, width)
    for name in ("driving_ids", "target_ids"):
        assert getattr(batch, name).shape == (3, FRAMES, height, width)
    for name, tensor in _tensors(batch).items():
        if name.endswith("_ids"):
            assert tensor.dtype == torch.int64
            assert set(tensor.unique().tolist()) <= set(range(batch.characters + 1))
        else:
            assert tensor.dtype == torch.float32
            assert 0.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0
    # Every image shows every character (they are kept large and in view).
    for k in range(1, batch.characters + 1):
        assert (batch.reference_ids == k).flatten(1).any(1).all()
        assert (batch.driving_ids == k).flatten(2).any(2).float().mean() > 0.9
        assert (batch.target_ids == k).flatten(2).any(2).float().mean() > 0.9
    assert batch.size == SIZE and batch.frames == FRAMES and len(batch) == 3


def test_same_seed_same_batch_and_items_do_not_depend_on_batch_size(animation_batch):
    again = generate_pairs(3, seed=11, mode="animation", size=SIZE, frames=FRAMES)
    for name, tensor in _tensors(animation_batch).items():
        assert torch.equal(tensor, getattr(again, name)), name
    single = generate_pairs(1, seed=11, mode="animation", size=SIZE, frames=FRAMES, first_index=2)
    for name, tensor in _tensors(animation_batch).items():
        assert torch.equal(tensor[2:3], getattr(single, name)), name
    other = generate_pairs(1, seed=12, mode="animation", size=SIZE, frames=FRAMES)
    assert not torch.equal(other.target[0], animation_batch.target[0])


def test_pairs_in_a_batch_differ(animation_batch):
    assert not torch.equal(animation_batch.target[0], animation_batch.target[1])
    assert not torch.equal(animation_batch.driving[1], animation_batch.driving[2])


def test_motion_pair_relations(animation_batch, replacement_batch):
    # Animation: the target plays on the reference background (frame 0 identical: same camera).
    assert torch.equal(animation_batch.target_background[:, 0], _bare(animation_batch, "reference"))
    # Replacement: the target plays on the driving clip's background (B removed, A in its place).
    driving_bare = torch.stack([_bare_frames(replacement_batch, i, "driving") for i in range(3)])
    assert torch.equal(replacement_batch.target_background, driving_bare)
    for batch in (animation_batch, replacement_batch):
        # A in the reference and in the target; B in the driving clip: different characters.
        assert not torch.equal(batch.driving, batch.target)
        # The target's characters are drawn over its background and nowhere else.
        outside = (batch.target_ids == 0) & ~_band(batch.target_ids > 0)
        difference = (batch.target - batch.target_background).abs().amax(2)
        assert float(difference[outside].max()) == 0.0


def _band(mask):
    from training.evaluation import boundary_band

    return boundary_band(mask)


def _bare(batch, role):
    """The backgrounds of ``role`` (one frame per pair) re-rendered without characters."""
    return torch.stack([_bare_frames(batch, i, role)[0] for i in range(len(batch))])


def _bare_frames(batch, index, role):
    from training.render import render_background

    draw = getattr(batch.scenes[index], role)
    features = torch.from_numpy(draw.background_features()).float()
    return render_background(features, *batch.size)


def _capsule_distance(px, py, start, end, r0, r1):
    axis = end - start
    length_sq = float(axis @ axis)
    dx0, dy0 = px - start[0], py - start[1]
    h = np.clip((dx0 * axis[0] + dy0 * axis[1]) / max(length_sq, 1e-9), 0.0, 1.0)
    return np.hypot(dx0 - h * axis[0], dy0 - h * axis[1]) - (r0 + h * (r1 - r0))


@pytest.mark.parametrize("fixture", ["animation_batch", "two_character_batch"])
@pytest.mark.parametrize("role", ["reference", "driving", "target"])
def test_ids_are_the_exact_front_most_coverage_of_the_drawn_capsules(fixture, role, request):
    """Recompute every pixel's identity from the scene's geometry in float64 numpy, independently of torch."""
    batch = request.getfixturevalue(fixture)
    height, width = batch.size
    py, px = np.mgrid[:height, :width] + 0.5
    ids_all = batch.reference_ids[:, None] if role == "reference" else getattr(batch, f"{role}_ids")
    for index in range(len(batch)):
        draw = getattr(batch.scenes[index], role)
        for t in range(ids_all.shape[1]):
            expected = np.zeros((height, width), dtype=np.int64)
            closest = np.full((height, width), np.inf)
            for plan, motion, identity in zip(draw.plans, draw.motions, draw.identities, strict=True):
                start, end = pose_world(plan, motion)
                start_px = draw.camera.to_pixels(start)[t]
                end_px = draw.camera.to_pixels(end)[t]
                radius_start, radius_end = (r[t] for r in pixel_radii(plan, draw.camera.zoom))
                for k in np.flatnonzero(plan.present):
                    distance = _capsule_distance(px, py, start_px[k], end_px[k], radius_start[k], radius_end[k])
                    expected[distance <= 0] = identity
                    closest = np.minimum(closest, np.abs(distance))
            actual = ids_all[index, t].numpy()
            wrong = actual != expected
            # float32 (torch) and float64 (here) may disagree only on pixel centres on the outline itself.
            assert wrong.sum() <= 2 and (closest[wrong] < 1e-3).all(), (index, t, int(wrong.sum()))


@pytest.mark.parametrize("fixture", ["animation_batch", "replacement_batch", "two_character_batch"])
def test_character_pixels_contrast_with_the_background(fixture, request):
    """Inside the masks (away from anti-aliased edges) a character differs from its background by more than
    the score's threshold: the drawn pixels and the ids agree."""
    batch = request.getfixturevalue(fixture)
    interior = (batch.target_ids > 0) & ~_band(batch.target_ids > 0)
    difference = (batch.target - batch.target_background).abs().amax(2)
    assert float(difference[interior].min()) > 0.1
    assert float(difference[interior].quantile(0.01)) >= CONTRAST_MARGIN * 0.5


@pytest.mark.parametrize("mode", ["animation", "replacement"])
@pytest.mark.parametrize("role", ["reference", "driving"])
def test_palette_masks_colours_and_polarity(mode, role, two_character_batch):
    ids = two_character_batch.driving_ids if role == "driving" else two_character_batch.reference_ids
    masks = palette_masks(ids, mode=mode, role=role)
    assert masks.shape == (*ids.shape[:-2], 3, *ids.shape[-2:]) and masks.dtype == torch.float32
    white_background = (mode == "animation") == (role == "reference")
    pixels = masks.movedim(-3, -1)
    assert torch.equal(pixels[ids == 0], torch.full_like(pixels[ids == 0], 1.0 if white_background else 0.0))
    for k in (1, 2):
        colour = torch.tensor(PALETTE[k - 1], dtype=torch.float32) / 255
        assert (ids == k).any()
        assert torch.equal(pixels[ids == k], colour.expand_as(pixels[ids == k]))


def test_palette_masks_reject_bad_arguments(animation_batch):
    with pytest.raises(ValueError, match="mode"):
        palette_masks(animation_batch.reference_ids, mode="anim", role="reference")
    with pytest.raises(ValueError, match="role"):
        palette_masks(animation_batch.reference_ids, mode="animation", role="target")
    with pytest.raises(ValueError, match="integer"):
        palette_masks(animation_batch.reference_ids.float(), mode="animation", role="reference")


def test_identities_are_numbered_left_to_right_in_the_reference(two_character_batch):
    columns = torch.arange(SIZE[1], dtype=torch.float32)
    for index in range(len(two_character_batch)):
        ids = two_character_batch.reference_ids[index]
        centroids = [float(columns.expand_as(ids)[ids == k].mean()) for k in (1, 2)]
        assert centroids[0] < centroids[1]


def test_train_and_heldout_seeds_are_disjoint_and_checked():
    assert TRAIN_SEEDS.stop <= HELDOUT_SEEDS.start
    assert seed_split(0) == "train" and seed_split(10**9 - 1) == "train" and seed_split(10**9) == "heldout"
    for setting in HELDOUT_SETTINGS.values():
        assert setting.seed in HELDOUT_SEEDS
    assert len({s.seed for s in HELDOUT_SETTINGS.values()}) == len(HELDOUT_SETTINGS)
    with pytest.raises(ValueError, match="not a train seed"):
        generate_pairs(1, seed=HELDOUT_SEEDS.start, size=SIZE, frames=1, split="train")
    with pytest.raises(ValueError, match="not a heldout seed"):
        generate_pairs(1, seed=5, size=SIZE, frames=1, split="heldout")
    with pytest.raises(ValueError, match="outside"):
        generate_pairs(1, seed=-1, size=SIZE, frames=1)
    # Held-out pair j is item j of its setting's seed, whatever the chunking.
    held = heldout_pairs("replacement", 1, first_index=4, size=SIZE, frames=3)
    spec = HELDOUT_SETTINGS["replacement"]
    same = generate_pairs(5, seed=spec.seed, mode=spec.mode, size=SIZE, frames=3)
    assert torch.equal(held.target[0], same.target[4])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch": 0}, "batch"),
        ({"mode": "swap"}, "mode"),
        ({"characters": 3}, "characters"),
        ({"size": (8, 64)}, "size"),
        ({"frames": 0}, "frames"),
        ({"seed": 1.5}, "seed"),
        ({"split": "test"}, "split"),
    ],
)
def test_bad_arguments_say_what_to_fix(options, message):
    arguments = {"batch": 1, "seed": 1, "size": SIZE, "frames": 1, **options}
    with pytest.raises(ValueError, match=message):
        generate_pairs(arguments.pop("batch"), **arguments)


def test_retargeting_a_two_legged_motion_onto_a_four_legged_character():
    rng = np.random.default_rng(7)
    quadruped = sample_body_plan(rng, "quadruped")
    biped = sample_body_plan(rng, "biped")
    motion = sample_motion(rng, 40)
    for plan in (quadruped, biped):
        start, end = pose_world(plan, motion)
        assert np.isfinite(start).all() and np.isfinite(end).all()
        # Lengths come from the plan, whatever the motion.
        lengths = np.linalg.norm(end - start, axis=-1)
        np.testing.assert_allclose(lengths[:, plan.present], np.broadcast_to(plan.length[plan.present], (40, plan.present.sum())), atol=1e-9)  # fmt: skip
        # Feet on the same ground line, lifted by the motion's jump times the character's own height.
        lowest = np.minimum(
            (start[:, plan.present, 1] - plan.radius_start[plan.present]).min(1),
            (end[:, plan.present, 1] - plan.radius_end[plan.present]).min(1),
        )
        np.testing.assert_allclose(lowest, motion.jump * plan.height, atol=1e-9)
    # Both stand where the motion puts its root: the rest-pose centres follow root_x, mirrored with facing.
    spine = ROLE_INDEX["spine"]
    for plan in (quadruped, biped):
        start, end = pose_world(plan, motion)
        spine_mid = (start[:, spine, 0] + end[:, spine, 0]) / 2
        assert np.abs(spine_mid - motion.root_x).max() < plan.height
    # A role the plan lacks is ignored: a tail-less character is unchanged by tail motion.
    tailless = next(p for p in (sample_body_plan(rng, "biped") for _ in range(50)) if not p.present[ROLE_INDEX["tail_base"]])
    wagging = sample_motion(rng, 10)
    still = sample_motion(np.random.default_rng(0), 10)
    still.angles[:, ROLE_INDEX["tail_base"]] = wagging.angles[:, ROLE_INDEX["tail_base"]] + 1.0
    reference = sample_motion(np.random.default_rng(0), 10)
    np.testing.assert_array_equal(pose_world(tailless, still)[1], pose_world(tailless, reference)[1])


def test_four_legged_target_driven_by_a_two_legged_performer_is_valid():
    """Find pairs where A has four legs and B two, and check A's target follows B's motion."""
    height, width = SIZE
    found = 0
    for index in range(40):
        scene = sample_pair_scene(np.random.default_rng(item_seed(3, index)), mode="animation", characters=1,
                                  frames=FRAMES, width=width, height=height)  # fmt: skip
        if scene.target.plans[0].kind != "quadruped" or scene.driving.plans[0].kind != "biped":
            continue
        found += 1
        batch = generate_pairs(1, seed=3, first_index=index, size=SIZE, frames=FRAMES)
        motion = scene.target.motions[0]
        assert scene.driving.motions[0] is motion  # one motion M, two performers
        rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
        for t in range(FRAMES):
            target = batch.target_ids[0, t] > 0
            driving = batch.driving_ids[0, t] > 0
            assert target.sum() > 30 and driving.sum() > 30
            if motion.jump[t] == 0:  # both stand on the ground row (when inside the picture)
                ground = scene.target.camera.ground_row[t]
                assert abs(float(rows[target].max()) + 0.5 - ground) <= 1.5
                assert abs(float(rows[driving].max()) + 0.5 - ground) <= 1.5
        if found == 2:
            break
    assert found, "no quadruped-driven-by-biped pair among 40 items"


def test_same_scene_at_any_size_and_length():
    small = generate_pairs(1, seed=21, size=(32, 32), frames=3).scenes[0]
    large = generate_pairs(1, seed=21, size=(64, 64), frames=5).scenes[0]
    assert small.target.plans[0].kind == large.target.plans[0].kind
    np.testing.assert_array_equal(small.target.plans[0].length, large.target.plans[0].length)
    np.testing.assert_allclose(small.driving.motions[0].angles[:3], large.driving.motions[0].angles[:3])


def test_roles_cover_both_body_plans():
    assert len(ROLES) == len(set(ROLES)) == 13
    for kind in ("biped", "quadruped"):
        for seed in range(10):
            plan = sample_body_plan(np.random.default_rng(seed), kind)
            assert plan.kind == kind and plan.present[ROLE_INDEX["spine"]]
            legs = [f"back_{side}_{part}" for side in ("left", "right") for part in ("upper", "lower")]
            assert all(plan.present[ROLE_INDEX[role]] for role in legs)
            if kind == "quadruped":
                assert all(plan.present[ROLE_INDEX[role.replace("back", "front")]] for role in legs)


def test_gpu_path_draws_the_same_pixels_as_the_cpu_path(two_character_batch):
    """GPUs draw whole frames in one go, CPUs part by part in bounding boxes: both give the same images."""
    from training.render import render

    scene = two_character_batch.scenes[0]
    parts = torch.from_numpy(scene.driving.part_features(scene.light)).float()
    background = torch.from_numpy(scene.driving.background_features()).float()
    whole = render(parts, background, *SIZE, crop=False)
    cropped = render(parts, background, *SIZE, crop=True)
    for a, b in zip(whole, cropped, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(whole[0], two_character_batch.driving[0])


def test_performance_plain_data_for_blender():
    import json

    from training.scene import sample_performance

    data = sample_performance(4, frames=6, size=(96, 128), kind="quadruped")
    assert json.loads(json.dumps(data)) == data  # plain JSON types only
    (character,) = data["characters"]
    plan = character["body_plan"]
    assert plan["kind"] == "quadruped" and data["background"]["kind"] == "flat"
    assert len(character["frames_px"]) == len(character["frames_world"]) == 6
    present = {part["role"] for part in plan["parts"] if part["present"]}
    assert set(character["frames_px"][0]) == present
    camera = data["camera"]
    for t in range(6):
        for role in present:
            world = character["frames_world"][t][role]
            pixel = character["frames_px"][t][role]
            zoom = camera["zoom_px_per_unit"][t]
            expected_x = camera["width"] / 2 + (world["start"][0] - camera["pan_world_x"][t]) * zoom
            expected_y = camera["ground_row_px"][t] - world["start"][1] * zoom
            assert abs(pixel["start"][0] - expected_x) < 1e-9 and abs(pixel["start"][1] - expected_y) < 1e-9
            part = next(p for p in plan["parts"] if p["role"] == role)
            length = np.hypot(*(np.subtract(world["end"], world["start"])))
            assert abs(length - part["length"]) < 1e-9
    # The character stands on the ground (world y = 0) when it is not hopping.
    lowest = min(min(p["start"][1] - p["radius_start"], p["end"][1] - p["radius_end"])
                 for p in character["frames_world"][0].values())  # fmt: skip
    assert -1e-9 <= lowest < 0.31 * plan["height"]
    assert sample_performance(4, frames=6, size=(96, 128), kind="quadruped") == data
