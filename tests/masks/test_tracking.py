"""Identity logic on synthetic tracks: duplicates, the 1% filter, the identity limit, left-to-right order with
crossing subjects, colour overrides and painting."""

from __future__ import annotations

import numpy as np
import pytest

from backend.masks.tracking import (
    Track,
    drop_small_tracks,
    identity_colours,
    merge_duplicate_tracks,
    order_left_to_right,
    paint_frame,
    resolve_identities,
    select_identities,
)
from backend.scail2.conditioning.masks import BLACK, PALETTE_RGB, WHITE

SIZE = 64  # tracker mask resolution used by these synthetic tracks


def disc(cx: float, cy: float, radius: float, size: int = SIZE) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2


def crossing_tracks(frames: int = 9) -> tuple[Track, Track]:
    """Subject A walks left -> right, subject B right -> left; they pass each other in the middle frame.

    B is listed first and has the lower id so neither list order nor id can explain a correct result.
    """
    a = Track(track_id=7, score=0.9, prompt="person")
    b = Track(track_id=3, score=0.8, prompt="person")
    for t in range(frames):
        progress = t / (frames - 1)
        a.masks[t] = disc(10 + 44 * progress, 32, 8)
        b.masks[t] = disc(54 - 44 * progress, 30, 9)
    return a, b


def colour_at(frame: np.ndarray, x: float, y: float, scale: float) -> tuple[int, int, int]:
    return tuple(int(v) for v in frame[int(y * scale), int(x * scale)])


def test_crossing_subjects_keep_their_first_frame_colours() -> None:
    a, b = crossing_tracks()
    identities = resolve_identities([b, a], "animation")
    assert [t.track_id for t in identities] == [7, 3]  # A was on the left in its first frame
    colours = identity_colours(len(identities))
    scale = 2.0
    for t in (0, 8):  # before and after crossing
        frame = paint_frame(identities, colours, t, (int(SIZE * scale), int(SIZE * scale)), BLACK)
        progress = t / 8
        assert colour_at(frame, 10 + 44 * progress, 32, scale) == PALETTE_RGB[0]  # A stays blue
        assert colour_at(frame, 54 - 44 * progress, 30, scale) == PALETTE_RGB[1]  # B stays red
    # After the crossing A is on the right, and still blue.
    last = paint_frame(identities, colours, 8, (SIZE, SIZE), BLACK)
    assert tuple(last[32, 54]) == PALETTE_RGB[0]
    assert tuple(last[30, 10]) == PALETTE_RGB[1]


def test_late_track_is_ordered_by_its_own_first_frame() -> None:
    left_late = Track(1, {t: disc(12, 32, 8) for t in range(4, 8)})
    right_early = Track(2, {t: disc(50, 32, 8) for t in range(0, 8)})
    assert [t.track_id for t in order_left_to_right([right_early, left_late])] == [1, 2]


def test_small_tracks_are_dropped_at_one_percent_of_the_frame() -> None:
    big = Track(1, {0: disc(32, 32, 10)})
    tiny = Track(2, {0: disc(5, 5, 2)})  # 13 px of 4096 = 0.3%
    edge = Track(3, {0: np.zeros((SIZE, SIZE), bool)})
    edge.masks[0][:1, :41] = True  # 41 px = 1.0% exactly: kept
    kept = drop_small_tracks([big, tiny, edge])
    assert [t.track_id for t in kept] == [1, 3]
    assert drop_small_tracks([big, tiny], min_area_fraction=0.0) == [big, tiny]


def test_area_filter_averages_over_the_frames_a_track_appears_in() -> None:
    # Tiny for most of the clip, large once: mean coverage stays below 1%.
    flicker = Track(1, {t: disc(5, 5, 1) for t in range(9)})
    flicker.masks[9] = disc(32, 32, 8)
    assert flicker.mean_area_fraction() < 0.01
    assert resolve_identities([flicker], "animation") == []


def test_duplicate_tracks_from_two_prompts_merge_into_one_identity() -> None:
    person = Track(1, {t: disc(20, 32, 10) for t in range(5)}, 0.9, "person")
    character = Track(2, {t: disc(21, 32, 10) for t in range(3, 8)}, 0.6, "character")
    other = Track(3, {t: disc(48, 32, 9) for t in range(8)}, 0.7, "character")
    merged = merge_duplicate_tracks([character, person, other])
    assert len(merged) == 2
    owner = next(t for t in merged if t.track_id in (1, 2))
    assert sorted(owner.masks) == list(range(8))  # frames only the duplicate had are kept
    identities = resolve_identities([person, character, other], "animation")
    assert len(identities) == 2
    assert identities[1].track_id == 3


def test_identity_limit_per_mode_keeps_the_largest() -> None:
    small = Track(1, {0: disc(8, 32, 6)})
    large = Track(2, {0: disc(56, 32, 9)})
    medium = Track(3, {0: disc(32, 32, 7)})
    assert [t.track_id for t in resolve_identities([small, large, medium], "replacement")] == [2]
    # Animation keeps two, then orders them left to right (medium is left of large).
    assert [t.track_id for t in resolve_identities([small, large, medium], "animation")] == [3, 2]
    assert [t.track_id for t in resolve_identities([small, large, medium], "animation", 3)] == [1, 3, 2]
    with pytest.raises(ValueError, match="at least 1"):
        select_identities([small], 0)


def test_colour_overrides_per_identity() -> None:
    assert identity_colours(2) == [0, 1]
    assert identity_colours(2, ["red"]) == [1, 0]  # identity 0 red, identity 1 the first free colour (blue)
    assert identity_colours(3, ["green", 0]) == [2, 0, 1]
    assert identity_colours(1, ["cyan", "magenta"]) == [4]
    with pytest.raises(ValueError, match="distinct"):
        identity_colours(2, ["red", "red"])
    with pytest.raises(ValueError, match="unknown mask colour"):
        identity_colours(1, ["orange"])


def test_painted_frames_hold_only_palette_colours_and_the_background() -> None:
    a, b = crossing_tracks()
    identities = order_left_to_right([a, b])
    colours = identity_colours(2, ["magenta", "yellow"])
    for background in (BLACK, WHITE):
        frame = paint_frame(
            identities, colours, 4, (90, 160), background
        )  # crossing frame, non-square output
        assert frame.shape == (90, 160, 3) and frame.dtype == np.uint8
        found = {tuple(c) for c in np.unique(frame.reshape(-1, 3), axis=0)}
        assert found == {PALETTE_RGB[3], PALETTE_RGB[5], background}
    empty = paint_frame(identities, colours, 99, (10, 12), WHITE)  # a frame no track covers
    assert (empty == 255).all()
