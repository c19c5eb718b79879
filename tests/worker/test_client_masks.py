"""``WorkerClient.preview_masks``: a real SAM3 worker's zip unpacked (numbered, atomic), the 409 of a worker without
``--sam3`` mapped to ``BadRequest`` with the server's message, and archives with unexpected entries refused."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from worker_helpers import DRIVING_VIDEO, REFERENCE_PHOTO, start_worker

from backend.client import BadRequest, DownloadError, _unpack_masks
from backend.masks.tiny import write_tiny_sam3
from backend.scail2.conditioning.masks import BLACK, PALETTE_RGB


@pytest.fixture(scope="module")
def sam3_worker(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("client_masks")
    sam3 = write_tiny_sam3(folder / "sam3", seed=0)
    running = start_worker(tiny_checkpoint, folder / "data", folder / "worker.log", "--sam3", str(sam3))
    yield running
    running.stop()


def test_preview_masks_unpacks_numbered_frames_atomically(sam3_worker, tmp_path: Path) -> None:
    client = sam3_worker.client()
    out = tmp_path / "masks" / "preview"
    spec = {"mode": "animation", "frame_range": [4, 7], "mask_prompts": "person", "mask_threshold": 0.0}
    result = client.preview_masks(spec, {"driving": DRIVING_VIDEO, "reference": REFERENCE_PHOTO}, out,
                                  first_frame=5)
    # Frames named by the clip frames they belong to (the caller's 1-based numbering), all present.
    assert [p.name for p in result["driving_mask"]] == ["frame_00005.png", "frame_00006.png", "frame_00007.png"]
    assert result["fps"] == pytest.approx(30000 / 1001, rel=1e-3)
    assert result["summary"]["driving"]["frames"] == 3
    for path in result["driving_mask"]:
        frame = np.asarray(Image.open(path).convert("RGB"))
        assert frame.shape == (144, 176, 3)
        assert {tuple(c) for c in np.unique(frame.reshape(-1, 3), axis=0)} <= set(PALETTE_RGB) | {BLACK}
    assert result["reference_mask"] == out / "reference_mask.png" and result["reference_mask"].is_file()
    assert json.loads((out / "masks.json").read_text()) == result["summary"]
    # A second preview replaces the folder as a whole; no staging folders are left beside it.
    again = client.preview_masks({"mode": "animation", "frame_range": [0, 2], "mask_threshold": 0.0},
                                 {"driving": DRIVING_VIDEO}, out)
    assert sorted(p.name for p in (out / "driving_mask").iterdir()) == ["frame_00000.png", "frame_00001.png"]
    assert again["reference_mask"] is None and not (out / "reference_mask.png").exists()
    assert [p.name for p in out.parent.iterdir()] == ["preview"]


def test_worker_without_sam3_answers_409_with_its_message(worker, tmp_path: Path) -> None:
    with pytest.raises(BadRequest) as caught:
        worker.client().preview_masks({"mode": "animation"}, {"driving": DRIVING_VIDEO}, tmp_path / "masks")
    assert caught.value.status == 409 and caught.value.code == "auto_masks_unavailable"
    assert "--sam3 DIR" in str(caught.value)
    assert not list(tmp_path.iterdir())  # nothing written, not even a staging folder


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ({"masks.json": b"{}", "../evil.png": b"x"}, "unexpected entry '../evil.png'"),
        ({"masks.json": b"{}", "driving_mask/../../evil.png": b"x"}, "unexpected entry"),
        ({"masks.json": b"{}", "/abs/frame_00000.png": b"x"}, "unexpected entry"),
        ({"driving_mask/frame_00000.png": b"x"}, "masks.json is missing"),
        ({"masks.json": b"{}", "driving_mask/frame_00001.png": b"x"}, "not numbered 0..0"),
        ({"masks.json": b"not json"}, "not JSON"),
    ],
)
def test_unexpected_archives_are_refused_before_anything_is_written(tmp_path: Path, entries, why) -> None:
    archive = _zip(tmp_path / "masks.zip", entries)
    with pytest.raises(DownloadError, match=why):
        _unpack_masks(archive, tmp_path / "out", 0)
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "evil.png").exists()


def test_unpacking_writes_only_known_names(tmp_path: Path) -> None:
    summary = {"driving": {"fps": 25.0, "frames": 2}}
    archive = _zip(tmp_path / "masks.zip", {"masks.json": json.dumps(summary).encode(), "reference_mask.png": _png(),
                                            "driving_mask/frame_00001.png": _png(),
                                            "driving_mask/frame_00000.png": _png()})
    result = _unpack_masks(archive, tmp_path / "out", 10)
    assert result["driving_mask"] == ["driving_mask/frame_00010.png", "driving_mask/frame_00011.png"]
    assert result["fps"] == 25.0 and result["reference_mask"] == "reference_mask.png"
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*")) == [
        "driving_mask", "driving_mask/frame_00010.png", "driving_mask/frame_00011.png", "masks.json",
        "reference_mask.png"]
