"""User video with captions: video files with ``.txt`` sidecars, or a JSONL/Parquet index
of (video file, caption) rows, decoded with PyAV (FFmpeg), sound included when present.

    path ─► items: every video file (sidecar mode) or every index row (``index`` set)
    one video ─► decode_video (frames at ``fps``, long side ``size``) + decode_audio (mono,
        ``audio_rate``) from a pyarrow input file (no local copy; S3 works the same)
        ─► chunks of ``frames_per_chunk`` frames, each {doc_id, video, audio?, text}

A missing caption and an undecodable file are BadRows naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from ogi_ray.corpus import fsio
from ogi_ray.corpus.sources import BadRow, RawSample
from ogi_ray.corpus.sources._av import clip_samples, decode_audio, decode_video
from ogi_ray.corpus.sources._records import relpath
from ogi_ray.corpus.sources.audio_text import index_items, sidecar_text
from ogi_ray.corpus.sources.text import check_paths, prepare_paths

VIDEO = (".mp4", ".webm", ".mkv", ".avi", ".mov")


@dataclass(kw_only=True)
class Params:
    path: str
    index: str = ""  # JSONL/Parquet with video_field and caption_field per row
    video_field: str = "video"
    caption_field: str = "caption"
    license_field: str = ""
    fps: float = 10.0
    size: int = 128  # long side in px
    frames_per_chunk: int = 16
    audio_rate: int = 16_000

    def validate(self) -> None:
        if not self.path:
            raise ValueError("path: required")
        for k in ("fps", "size", "frames_per_chunk", "audio_rate"):
            if getattr(self, k) <= 0:
                raise ValueError(f"{k}: must be > 0")


def prepare(params: Params, base: str) -> Params:
    return prepare_paths(params, base, ("path", "index"))


def check(params: Params) -> None:
    check_paths(params, ("path", "index"))


def items(params: Params) -> list:
    if params.index:
        return sorted(index_items(params.index, params.path, params.video_field, params.caption_field,
                                  params.license_field))  # fmt: skip
    return fsio.list_files(params.path, VIDEO)


def read(item: str, params: Params) -> Iterator[RawSample | BadRow]:
    entry = json.loads(item) if params.index else {"file": item, "text": sidecar_text(item)}
    uri, caption = entry["file"], entry["text"]
    if not caption:
        yield BadRow("missing caption", f"no caption for {uri}", "file")
        return
    try:
        with fsio.open_input(uri) as f:
            video, v0 = decode_video(f, params.fps, params.size)
        with fsio.open_input(uri) as f:
            audio = decode_audio(f, params.audio_rate)
    except Exception as e:  # noqa: BLE001 - FFmpeg errors (av.error.*), missing files
        yield BadRow("undecodable video", f"{uri}: {type(e).__name__}: {e}", "file")
        return
    for s in clip_samples(relpath(uri, params.path), video, v0, audio, fps=params.fps,
                          per_chunk=params.frames_per_chunk, rate=params.audio_rate, text=caption):  # fmt: skip
        if params.license_field:
            s["license"] = entry.get("license", "")
        yield s
