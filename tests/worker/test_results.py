"""The result folder: identical results give byte-identical files, whenever they are written."""

from __future__ import annotations

import time
import zipfile

import numpy as np

from backend.worker.results import write_result


def test_identical_results_give_byte_identical_zips(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (5, 32, 48, 3), np.uint8)
    first = write_result(frames, 16.0, tmp_path / "first")
    time.sleep(2.1)  # zip timestamps have a 2-second resolution: a clock in the archive would show here
    second = write_result(frames, 16.0, tmp_path / "second")
    zip_first = (tmp_path / "first" / "result" / "result.zip").read_bytes()
    assert zip_first == (tmp_path / "second" / "result" / "result.zip").read_bytes()
    assert [f["sha256"] for f in first["files"] if f["kind"] == "zip"] == \
        [f["sha256"] for f in second["files"] if f["kind"] == "zip"]
    with zipfile.ZipFile(tmp_path / "first" / "result" / "result.zip") as archive:
        assert archive.namelist() == [f"frames/{i:06d}.png" for i in range(5)]
        assert archive.read("frames/000003.png") == (tmp_path / "first" / "result" / "frames" / "000003.png").read_bytes()
