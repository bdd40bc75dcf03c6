"""Storage for the corpus build: every input and output path is a ``pyarrow.fs`` URI.

    "data/x.jsonl" ─┐ (relative: against the mixture file's folder)
    "/abs/x"       ─┼─► resolve(uri, base) ─► (FileSystem, path) ─► open / list / write
    "s3://b/k"     ─┘   (gs://, hdfs://, ... whatever pyarrow.fs.FileSystem.from_uri knows)

S3 credentials and endpoints come from the environment (``AWS_ENDPOINT_URL`` and the
usual variables), so the same URI works on the driver and in Ray workers that inherit
it. Nothing here assumes a shared POSIX file system (DESIGN decision 11). On S3 a PUT is
atomic and there is no rename: ``write_bytes`` is one PUT, ``move`` a copy and a delete.

This is the function face of :mod:`ogi_ray.storage` for code that passes URIs around
(readers, shard writers): whole-object writes and hashing go through ``Store`` so that a
local write is temp + fsync + rename there too.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ogi_ray.storage import is_uri, write_file

__all__ = ["is_uri", "absolute", "resolve", "join", "info", "exists", "list_files", "open_input",
           "read_bytes", "write_bytes", "sha256_of", "delete", "move", "walk_names"]  # fmt: skip

def absolute(path: str | Path, base: str | Path | None = None) -> str:
    """``path`` as an absolute local path or an untouched URI (relative: against ``base``)."""
    path = str(path)
    if is_uri(path):
        return path.rstrip("/")
    p = Path(path).expanduser()
    if not p.is_absolute() and base is not None:
        p = Path(base) / p
    return str(p.resolve())


def resolve(uri: str | Path, base: str | Path | None = None) -> tuple[Any, str]:
    """(pyarrow FileSystem, path inside it) for a local path or URI."""
    import pyarrow.fs as pafs

    full = absolute(uri, base)
    if not is_uri(full):
        return pafs.LocalFileSystem(), full
    return pafs.FileSystem.from_uri(full)


def join(uri: str, *parts: str) -> str:
    return "/".join([str(uri).rstrip("/"), *(p.strip("/") for p in parts)])


def info(uri: str) -> Any:
    """pyarrow FileInfo of ``uri`` (type NotFound when absent); OSError when unreachable."""
    fs, path = resolve(uri)
    return fs.get_file_info(path)


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    return info(uri).type != pafs.FileType.NotFound


def list_files(uri: str, suffixes: tuple[str, ...] = ()) -> list[tuple[str, int]]:
    """(uri, size) of every file at or under ``uri`` whose name ends with a suffix, sorted.

    A file URI lists itself. Hidden names (``.x``, ``_x``: Spark/Hive markers) are skipped.
    """
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    top = fs.get_file_info(path)
    if top.type == pafs.FileType.File:
        infos = [top]
    else:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    prefix = uri[: len(uri) - len(path)] if is_uri(uri) else ""
    out = []
    for i in infos:
        name = i.path.rsplit("/", 1)[-1]
        if i.type != pafs.FileType.File or name.startswith((".", "_")):
            continue
        if suffixes and not name.lower().endswith(suffixes):
            continue
        out.append((prefix + i.path, int(i.size or 0)))
    return sorted(out)


def open_input(uri: str, *, stream: bool = False, compression: str | None = None) -> Any:
    """A readable, seekable pyarrow file (``stream``: sequential, with decompression)."""
    fs, path = resolve(uri)
    if stream:
        return fs.open_input_stream(path, compression=compression or "detect")
    return fs.open_input_file(path)


def read_bytes(uri: str) -> bytes:
    with open_input(uri, stream=True, compression=None) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> str:
    """Write ``data`` at ``uri`` whole (S3: one PUT; local: temp, fsync, rename); returns
    its SHA-256."""
    write_file(absolute(uri), data)
    return hashlib.sha256(data).hexdigest()


def sha256_of(uri: str) -> str:
    from ogi_ray.canonical import stream_sha256

    with open_input(uri, stream=True, compression=None) as f:
        return stream_sha256(f)


def delete(uri: str) -> None:
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


def move(src: str, dst: str) -> None:
    """Rename (local, atomic) or copy + delete (S3) ``src`` over ``dst``."""
    fs, s = resolve(src)
    _, d = resolve(dst)
    parent = d.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    if not is_uri(src):
        os.replace(s, d)
    else:
        fs.move(s, d)


def walk_names(uri: str) -> Iterator[str]:
    """Paths (relative to ``uri``) of every file under ``uri``; nothing if it is absent."""
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    sel = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    for i in fs.get_file_info(sel):
        if i.type == pafs.FileType.File:
            yield i.path[len(path) :].lstrip("/")
