"""Crash safety: a worker killed with SIGKILL mid-job and restarted finishes every job, every frame exactly once."""

from __future__ import annotations

import os
import signal

import numpy as np
from PIL import Image
from safetensors.numpy import load_file
from worker_helpers import SHORT_SPEC, start_worker, wait_until

from backend.worker.store import JobStore

# 29 driving frames in windows of 13 (8 new frames each after 5 of history): windows [0,13) [8,21) [16,29).
# 60 steps keep each window busy for a second or more, so the kill lands between the first window and the end.
THREE_WINDOWS = {**SHORT_SPEC, "frame_range": [0, 29], "segment_len": 13, "steps": 60, "seed": 11}


def test_kill_9_mid_job_then_restart_resumes_and_runs_the_queue(tiny_checkpoint, inputs, tmp_path):
    data = tmp_path / "data"
    first = start_worker(tiny_checkpoint, data, tmp_path / "worker.log")
    client = first.client()
    long_job = client.submit(THREE_WINDOWS, inputs.files())
    queued = [client.submit({**SHORT_SPEC, "seed": seed}, inputs.files()) for seed in (1, 2)]

    wait_until(lambda: client.status(long_job)["windows_done"] >= 1, timeout=120, interval=0.02)
    os.kill(first.pid, signal.SIGKILL)
    first.process.wait(10)
    first.stop()
    assert JobStore(data).get(long_job).status == "running", "the kill must land while the job runs"

    # What the crash left on disk: the first window's frames, committed before the kill.
    window_file = data / "jobs" / long_job / "windows" / "0000.safetensors"
    stored_first_window = load_file(str(window_file))["frames"]
    assert stored_first_window.shape == (13, 64, 96, 3)

    second = start_worker(tiny_checkpoint, data, tmp_path / "worker.log")
    try:
        client = second.client()
        final = client.wait(long_job, poll_interval=0.05, timeout=180)
        assert final["attempts"] == 2
        assert final["windows_done"] == 3
        assert final["timings"]["resumed_windows"] >= 1
        assert final["result"]["frames"] == 29

        paths = client.download(long_job, tmp_path / "out", what=("frames",))
        assert [p.name for p in paths["frames"]] == [f"{i:06d}.png" for i in range(29)]
        frames = np.stack([np.asarray(Image.open(p)) for p in paths["frames"]])
        # The frames the killed run finished are in the result untouched (not recomputed, not repeated).
        np.testing.assert_array_equal(frames[:13], stored_first_window)
        assert not window_file.parent.exists(), "window files are removed once the result is written"

        # And the resumed video is the one an uninterrupted run of the same request gives.
        again = client.submit(THREE_WINDOWS, inputs.files())
        client.wait(again, poll_interval=0.05, timeout=180)
        uninterrupted = client.download(again, tmp_path / "again", what=("frames",))["frames"]
        np.testing.assert_array_equal(frames, np.stack([np.asarray(Image.open(p)) for p in uninterrupted]))

        for job_id in queued:
            status = client.wait(job_id, poll_interval=0.05, timeout=120)
            assert status["attempts"] == 1 and status["result"]["frames"] == 9

        # A clean stop (SIGTERM) interrupts the running job between steps and puts it back in the queue.
        interrupted = client.submit({**THREE_WINDOWS, "steps": 50}, inputs.files())
        wait_until(lambda: client.status(interrupted)["detail"]["step"], timeout=120, interval=0.02)
    finally:
        exit_code = second.stop()
    assert exit_code == 0
    store = JobStore(data)
    assert store.get(interrupted).status == "queued" and store.get(interrupted).attempts == 1
