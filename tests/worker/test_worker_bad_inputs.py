"""Bad requests each get a clear 4xx JSON error naming the field, and the worker keeps serving."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import requests
from PIL import Image
from worker_helpers import (
    BUNNY_VIDEO,
    DRIVING_VIDEO,
    OTHER_PHOTO,
    SHORT_SPEC,
    UPLOAD_LIMIT_MB,
    write_mask_zip,
)


@pytest.fixture(scope="module")
def bad_files(inputs, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad_inputs")
    video = DRIVING_VIDEO.read_bytes()
    files = {
        "truncated.mp4": video[: len(video) // 3],
        "renamed.mp4": b"This is a shot list, not a video.\n" * 50,
        "junk.bin": np.random.default_rng(0).integers(0, 256, (UPLOAD_LIMIT_MB + 1) << 20, np.uint8).tobytes(),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    # A real, well-formed mp4 that holds no frame at all.
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i",
                    "color=c=black:s=64x64:r=16", "-frames:v", "0", "-c:v", "libx264", str(folder / "empty.mp4")],
                   check=True)
    (folder / "bunny.mp4").write_bytes(BUNNY_VIDEO.read_bytes())
    # Within every per-clip limit (640x360, 480 frames, 30 s) but 330 MB decoded: over the tests' 256 MiB budget.
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=s=640x360:r=16", "-t", "30", "-c:v", "libx264", "-preset", "ultrafast",
                    str(folder / "long_640x360.mp4")], check=True)
    write_mask_zip(folder / "mask_5_frames.zip", 5)
    # A photo given as a mask: almost no pixel is a palette colour, white or black.
    photo = np.asarray(Image.open(OTHER_PHOTO).convert("RGB").resize((128, 128)))
    Image.fromarray(photo).save(folder / "photo_mask.png")
    Image.open(inputs.reference).convert("RGB").save(folder / "rgb_reference.png")
    return {name: folder / name for name in (*files, "empty.mp4", "bunny.mp4", "long_640x360.mp4", "mask_5_frames.zip",
                                             "photo_mask.png", "rgb_reference.png")}


def post_job(worker, spec, files: dict[str, Path], token: str | None = "worker", raw_spec: str | None = None):
    headers = {} if token is None else {"Authorization": f"Bearer {worker.token if token == 'worker' else token}"}
    handles = {name: (path.name, open(path, "rb")) for name, path in files.items()}
    try:
        return requests.post(f"{worker.url}/v1/jobs", headers=headers, timeout=60,
                             data={"spec": raw_spec if raw_spec is not None else json.dumps(spec)}, files=handles)
    finally:
        for _, handle in handles.values():
            handle.close()


def assert_error(response: requests.Response, status: int, field: str, words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    assert words.lower() in error["message"].lower(), error
    assert error["code"]


CASES = {
    # name: (spec changes, file changes, raw spec, expected status, field, words in the message)
    "truncated mp4": ({}, {"driving": "truncated.mp4"}, None, 422, "driving", "cannot read"),
    "zero-frame video": ({}, {"driving": "empty.mp4"}, None, 422, "driving", "video"),
    "text renamed .mp4": ({}, {"driving": "renamed.mp4"}, None, 422, "driving", "cannot read"),
    "mask frame count": ({"frame_range": None}, {"driving_mask": "mask_5_frames.zip"}, None, 422, "driving_mask",
                         "frames"),
    "mask without palette colours": ({}, {"reference_mask": "photo_mask.png"}, None, 422, "reference_mask",
                                     "match no mask colour"),
    "no mask and no alpha": ({}, {"reference": "rgb_reference.png"}, None, 422, "reference_mask", "required"),
    "oversize upload": ({}, {"driving": "junk.bin"}, None, 413, "files", "at most"),
    "clip wider than the side limit": ({"frame_range": None}, {"driving": "bunny.mp4"}, None, 413, "driving",
                                       "--max-side"),
    "clip over the decode budget": ({"frame_range": None}, {"driving": "long_640x360.mp4", "driving_mask": None}, None,
                                    413, "driving", "GiB"),
    "size not multiple of 32": ({"size": "100x64"}, {}, None, 422, "spec.size", "multiple of 32"),
    "unknown preset": ({"preset": "ultra"}, {}, None, 422, "spec.preset", "fast"),
    "malformed spec JSON": ({}, {}, '{"mode": "animation", ', 400, "spec", "not valid JSON"),
    "unknown spec key": ({"stepz": 3}, {}, None, 422, "spec.stepz", "extra"),
    "bad frame range": ({"frame_range": [5, 5]}, {}, None, 422, "spec.frame_range", "start < end"),
    "frame range past the clip": ({"frame_range": [500, 600]}, {}, None, 422, "spec.frame_range", "only 120"),
    "zip without fps": ({}, {"driving": "mask_5_frames.zip", "driving_mask": None}, None, 422, "spec.fps", "fps"),
    "automatic masks": ({"driving_mask": "auto"}, {"driving_mask": None}, None, 422, "spec.driving_mask", "--sam3"),
    "mask file not sent": ({"reference_mask": "file"}, {}, None, 422, "spec.reference_mask", "no 'reference_mask'"),
    "unknown LoRA": ({"loras": {"sharpen": 1.0}}, {}, None, 422, "spec.loras", "sharpen"),
    "unknown file field": ({}, {"background": "rgb_reference.png"}, None, 422, "background", "unknown file field"),
    "missing driving": ({}, {"driving": None, "driving_mask": None}, None, 422, "driving", "required"),
    "bad segment length": ({"segment_len": 20}, {}, None, 422, "spec.segment_len", "4k+1"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_gets_a_clear_error(worker, inputs, bad_files, case):
    spec_changes, file_changes, raw_spec, status, field, words = CASES[case]
    spec = {**SHORT_SPEC, **spec_changes}
    files = dict(inputs.files())
    for name, replacement in file_changes.items():
        if replacement is None:
            files.pop(name, None)
        else:
            files[name] = bad_files[replacement]
    assert_error(post_job(worker, spec, files, raw_spec=raw_spec), status, field, words)


def test_missing_and_wrong_token(worker, inputs):
    assert_error(post_job(worker, SHORT_SPEC, inputs.files(), token=None), 401, "Authorization", "missing")
    assert_error(post_job(worker, SHORT_SPEC, inputs.files(), token="x" * 43), 401, "Authorization", "wrong token")
    for method, path in (("GET", "/v1/jobs"), ("GET", "/v1/jobs/AAAAAAAAAAAAAAAAAAAAAA"),
                         ("POST", "/v1/jobs/AAAAAAAAAAAAAAAAAAAAAA/cancel"),
                         ("DELETE", "/v1/jobs/AAAAAAAAAAAAAAAAAAAAAA"),
                         ("GET", "/v1/jobs/AAAAAAAAAAAAAAAAAAAAAA/result/mp4")):
        response = requests.request(method, f"{worker.url}{path}", timeout=10,
                                    headers={"Authorization": "Bearer not-the-token"})
        assert_error(response, 401, "Authorization", "wrong token")
    unknown = requests.get(f"{worker.url}/v1/jobs/AAAAAAAAAAAAAAAAAAAAAA", timeout=10,
                           headers={"Authorization": f"Bearer {worker.token}"})
    assert_error(unknown, 404, "id", "no job")


def test_not_multipart_and_no_spec(worker, inputs):
    headers = {"Authorization": f"Bearer {worker.token}"}
    as_json = requests.post(f"{worker.url}/v1/jobs", json=SHORT_SPEC, headers=headers, timeout=10)
    assert_error(as_json, 415, "Content-Type", "multipart")
    with open(inputs.reference, "rb") as handle:
        no_spec = requests.post(f"{worker.url}/v1/jobs", files={"reference": handle}, headers=headers, timeout=10)
    assert_error(no_spec, 400, "spec", "spec")


def test_worker_still_serves_after_bad_requests(worker, inputs):
    client = worker.client()
    job_id = client.submit(SHORT_SPEC, inputs.files())
    assert client.wait(job_id, poll_interval=0.05, timeout=120)["result"]["frames"] == 9
    assert not list((Path(worker.data_dir) / "staging").iterdir()), "refused uploads leave nothing behind"
    for folder in (Path(worker.data_dir) / "jobs").iterdir():
        assert client.status(folder.name)["id"] == folder.name, "every job folder belongs to a stored job"
