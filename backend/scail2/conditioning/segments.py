"""Windows over long driving clips.

SCAIL-2 denoises at most ``segment_len`` (81) frames at a time. Each later window starts ``segment_overlap`` (5)
frames before the previous one ends: those frames are the "history", re-encoded from the previous window's decoded
pixels and kept clean, and they are dropped from that window's output.

Two builders:

- ``official_windows``: the official ``build_segments``. A clip of at most ``segment_len`` frames is trimmed to
  4k+1; a longer clip gets only the windows that fit completely, so the frames after the last one are dropped.
- ``padded_windows`` (ours, the default): every driving frame is kept. The last window is padded up to the next
  4k+1 length by repeating the clip's last frame, and the padding is trimmed after decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

TEMPORAL_STRIDE = 4  # pixel frames per latent frame after the first (Wan VAE)
DEFAULT_SEGMENT_LEN = 81
DEFAULT_SEGMENT_OVERLAP = 5


@dataclass(frozen=True)
class Window:
    """One denoising window over the driving clip.

    ``[start, end)`` are the real driving frames it covers; it is sampled at ``length`` frames (4k+1), the frames
    past ``end`` being copies of the clip's last frame. ``history`` leading frames come from the previous window;
    the window contributes ``[start + history, end)`` to the output.
    """

    index: int
    start: int
    end: int
    length: int
    history: int

    @property
    def padding(self) -> int:
        return self.start + self.length - self.end

    @property
    def output_start(self) -> int:
        return self.start + self.history

    @property
    def latent_frames(self) -> int:
        return (self.length - 1) // TEMPORAL_STRIDE + 1

    @property
    def history_latent_frames(self) -> int:
        """Latent frames the ``history`` pixel frames encode to (2 for the official overlap of 5)."""
        return 0 if self.history == 0 else (self.history - 1) // TEMPORAL_STRIDE + 1


def round_down_4k1(frames: int) -> int:
    return (frames - 1) // TEMPORAL_STRIDE * TEMPORAL_STRIDE + 1


def round_up_4k1(frames: int) -> int:
    return -(-(frames - 1) // TEMPORAL_STRIDE) * TEMPORAL_STRIDE + 1


def _check_lengths(num_frames: int, segment_len: int, segment_overlap: int) -> None:
    if num_frames < 1:
        raise ValueError(f"the driving clip has no frames ({num_frames})")
    if segment_len < 1 or (segment_len - 1) % TEMPORAL_STRIDE != 0:
        raise ValueError(f"segment_len must be 4k+1, got {segment_len}")
    if not 0 < segment_overlap < segment_len or (segment_overlap - 1) % TEMPORAL_STRIDE != 0:
        raise ValueError(f"segment_overlap must be 4k+1 and smaller than segment_len, got {segment_overlap}")


def official_windows(
    num_frames: int, segment_len: int = DEFAULT_SEGMENT_LEN, segment_overlap: int = DEFAULT_SEGMENT_OVERLAP
) -> list[Window]:
    """The official ``build_segments``: the tail that does not fill a whole window is dropped."""
    _check_lengths(num_frames, segment_len, segment_overlap)
    if num_frames <= segment_len:
        length = round_down_4k1(num_frames)
        return [Window(0, 0, length, length, 0)]
    stride = segment_len - segment_overlap
    windows: list[Window] = []
    start = 0
    while start + segment_len <= num_frames:
        history = 0 if not windows else segment_overlap
        windows.append(Window(len(windows), start, start + segment_len, segment_len, history))
        start += stride
    return windows


def padded_windows(
    num_frames: int, segment_len: int = DEFAULT_SEGMENT_LEN, segment_overlap: int = DEFAULT_SEGMENT_OVERLAP
) -> list[Window]:
    """Official windows, plus a last window that reaches the final frame, padded to the next 4k+1 length."""
    _check_lengths(num_frames, segment_len, segment_overlap)
    stride = segment_len - segment_overlap
    windows: list[Window] = []
    start = 0
    while True:
        history = 0 if not windows else segment_overlap
        end = min(start + segment_len, num_frames)
        windows.append(Window(len(windows), start, end, round_up_4k1(end - start), history))
        if end == num_frames:
            return windows
        start += stride


def output_frame_count(windows: list[Window]) -> int:
    """Frames the windows produce after dropping history and padding."""
    return sum(window.end - window.output_start for window in windows)
