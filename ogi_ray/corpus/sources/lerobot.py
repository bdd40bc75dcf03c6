"""Robot demonstrations in the LeRobot dataset v3 layout: frames, state, actions, task text.

    root/meta/info.json              codebase_version "v3.x", fps, features, data_path and
                                     video_path templates ({chunk_index}, {file_index}, {video_key})
    root/meta/episodes/**/*.parquet  one row per episode: episode_index, tasks, length,
                                     data/chunk_index, data/file_index, dataset_from_index,
                                     dataset_to_index, videos/<key>/{chunk_index, file_index,
                                     from_timestamp, to_timestamp}
    root/data/chunk-*/file-*.parquet frames of many episodes: episode_index, index,
                                     observation.state, action, timestamp, ...
    root/videos/<key>/chunk-*/file-*.mp4   the camera streams, episodes concatenated

    items: one per episode (listed from meta/episodes) ─► read: the episode's rows of its
    data file (state T×P, action T×A, float32), the frames of its time span of one camera
    (PyAV, long side ``size``), the task text ─► one sample per episode

Frames and steps are matched by index (the layout records both at ``fps``); an episode
whose video has fewer frames than steps is cut to the shorter. Errors name the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ogi_ray.corpus import fsio
from ogi_ray.corpus.sources import BadRow, RawSample
from ogi_ray.corpus.sources.text import check_path


@dataclass(kw_only=True)
class Params:
    path: str  # the dataset root (holds meta/info.json)
    video_key: str = ""  # default: the first feature of dtype "video"
    state_key: str = "observation.state"
    action_key: str = "action"
    size: int = 64  # long side of the decoded frames, px

    def validate(self) -> None:
        if not self.path:
            raise ValueError("path: required")
        if self.size < 2:
            raise ValueError("size: must be >= 2")


def prepare(params: Params, base: str) -> Params:
    params.path = fsio.absolute(params.path, base)
    return params


def info(root: str) -> dict[str, Any]:
    """meta/info.json, checked to be a v3 layout."""
    uri = fsio.join(root, "meta", "info.json")
    data = json.loads(fsio.read_bytes(uri))
    version = str(data.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise ValueError(f"{uri}: codebase_version {version!r} is not a LeRobot v3 layout")
    for key in ("fps", "features", "data_path"):
        if key not in data:
            raise ValueError(f"{uri}: field {key!r} is missing")
    return data


def check(params: Params) -> None:
    check_path(params.path)
    try:
        meta = info(params.path)
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"path: {e}") from e
    video_key(meta, params)


def video_key(meta: dict, params: Params) -> str:
    videos = [k for k, f in meta["features"].items() if f.get("dtype") == "video"]
    key = params.video_key or (videos[0] if videos else "")
    if key not in videos:
        raise ValueError(f"video_key: {key!r} is not a video feature of the dataset (videos: {videos})")
    return key


def items(params: Params) -> list[str]:
    import pyarrow.parquet as pq

    meta = info(params.path)
    key = video_key(meta, params)
    out = []
    for uri, _ in fsio.list_files(fsio.join(params.path, "meta", "episodes"), (".parquet",)):
        with fsio.open_input(uri) as f:
            for ep in pq.read_table(f).to_pylist():
                tasks = ep.get("tasks") or []
                out.append(json.dumps({
                    "episode": int(ep["episode_index"]), "tasks": list(tasks),
                    "data": meta["data_path"].format(chunk_index=ep["data/chunk_index"], file_index=ep["data/file_index"]),
                    "video": meta["video_path"].format(video_key=key, chunk_index=ep[f"videos/{key}/chunk_index"],
                                                       file_index=ep[f"videos/{key}/file_index"]),
                    "t0": float(ep[f"videos/{key}/from_timestamp"]), "t1": float(ep[f"videos/{key}/to_timestamp"]),
                }, sort_keys=True))  # fmt: skip
    return sorted(out, key=lambda s: json.loads(s)["episode"])


def _frames(uri: str, t0: float, t1: float, size: int) -> np.ndarray:
    """Frames with t0 <= time < t1 of the first video stream, long side ``size``."""
    import av

    out = []
    with fsio.open_input(uri) as f, av.open(f) as c:
        stream = c.streams.video[0]
        c.seek(int(t0 / stream.time_base), stream=stream, backward=True, any_frame=False)
        for fr in c.decode(stream):
            t = float(fr.time or 0.0)
            if t >= t1 - 1e-6:
                break
            if t >= t0 - 1e-6:
                scale = size / max(fr.width, fr.height)
                w, h = max(2, round(fr.width * scale)), max(2, round(fr.height * scale))
                out.append(fr.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray())
    if not out:
        raise ValueError(f"no frames in [{t0}, {t1}) s")
    return np.stack(out).astype(np.uint8)


def read(item: str, params: Params) -> Iterator[RawSample | BadRow]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ep = json.loads(item)
    data_uri = fsio.join(params.path, ep["data"])
    where = f"episode {ep['episode']}"
    try:
        with fsio.open_input(data_uri) as f:
            t = pq.read_table(f, columns=["episode_index", "index", params.state_key, params.action_key])
    except Exception as e:  # noqa: BLE001 - missing file or columns
        yield BadRow("unreadable data file", f"{data_uri}: {type(e).__name__}: {e}", where)
        return
    t = t.filter(pc.equal(t["episode_index"], ep["episode"])).sort_by("index")
    state = np.asarray(t[params.state_key].to_pylist(), np.float32)
    action = np.asarray(t[params.action_key].to_pylist(), np.float32)
    video_uri = fsio.join(params.path, ep["video"])
    try:
        video = _frames(video_uri, ep["t0"], ep["t1"], params.size)
    except Exception as e:  # noqa: BLE001 - FFmpeg errors
        yield BadRow("undecodable video", f"{video_uri}: {type(e).__name__}: {e}", where)
        return
    n = min(len(video), len(state), len(action))
    if n == 0:
        yield BadRow("empty episode", f"{data_uri}: no rows", where)
        return
    yield {"doc_id": f"episode_{ep['episode']:06d}", "video": video[:n], "proprio": state[:n].reshape(n, -1),
           "action": action[:n].reshape(n, -1), "text": "; ".join(ep["tasks"]) or "robot episode"}  # fmt: skip
