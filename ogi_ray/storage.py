"""One storage abstraction for everything a run or a corpus reads and writes: a folder
in some ``pyarrow.fs`` filesystem (DESIGN decision 11).

    Store("runs/demo")                    LocalFileSystem, the path made absolute
    Store("file:///abs/runs/demo")        the same folder through a URI
    Store("s3://bucket/runs/demo")        S3 (gs://, hdfs://, ... as pyarrow supports;
                                          AWS_ENDPOINT_URL etc. come from the environment)
    Store.on(fs, path)                    a folder of an already-built filesystem (e.g. the
                                          one Ray Train's StorageContext uses)

Paths below a store are '/'-separated relative names. Writes are whole-object:

* ``write_atomic`` on a local disk writes a hidden temporary name, fsyncs it and renames
  it onto the target, so readers see the old bytes or the new, never a part. On an object
  store one PUT is already atomic and there is no rename (``move`` is a copy and a
  delete), so it writes the final key directly. Callers that need a consistent set of
  files write content-addressed names first and the pointer (a HEAD) last.
* ``open_output`` streams a large object (a checkpoint shard) to its final name; on a
  local disk through the same temporary-then-rename dance, on S3 as one multipart upload
  that only becomes visible when closed.

Names starting with ``.`` (temporaries, Ray's markers) are never listed.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow.fs as pafs


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def join(base: str, rel: str) -> str:
    """``base`` (a local path or URI) joined with the relative ``rel``."""
    return f"{str(base).rstrip('/')}/{rel}" if rel else str(base)


def absolute(path: str | Path) -> str:
    """A URI unchanged; a local path made absolute (what every process can open)."""
    return str(path) if is_uri(path) else str(Path(path).expanduser().resolve())


def write_file(where: str | Path, data: bytes) -> None:
    """Write the file ``where`` (a local path or URI) whole: see ``Store.write_atomic``."""
    parent, _, name = absolute(where).rpartition("/")
    Store(parent or "/").write_atomic(name, data)


class Store:
    """A folder in some pyarrow filesystem."""

    def __init__(self, root: str | Path) -> None:
        root = str(root)
        if is_uri(root):
            self.fs, path = pafs.FileSystem.from_uri(root)
            self.uri = root.rstrip("/")
        else:
            self.fs, path = pafs.LocalFileSystem(), absolute(root)
            self.uri = path
        self.root = path.rstrip("/") or "/"

    @classmethod
    def on(cls, fs: pafs.FileSystem, path: str, uri: str | None = None) -> Store:
        """A store over an existing filesystem object (``uri`` only names it in messages)."""
        s = cls.__new__(cls)
        s.fs, s.root = fs, path.rstrip("/") or "/"
        s.uri = uri or (s.root if isinstance(fs, pafs.LocalFileSystem) else f"{fs.type_name}://{s.root}")
        return s

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Ship by URI: filesystem objects with credentials are rebuilt where they land.
        if isinstance(self.fs, pafs.LocalFileSystem) or is_uri(self.uri):
            return (Store, (self.uri,))
        return (Store.on, (self.fs, self.root, self.uri))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def local_path(self, rel: str = "") -> Path | None:
        """The path on this machine's disk, or None for a remote filesystem."""
        return Path(self.path(rel)) if self.is_local else None

    def path(self, rel: str = "") -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def where(self, rel: str = "") -> str:
        """``rel`` as a URI (or absolute local path), for messages and for other processes."""
        return join(self.uri, rel)

    def sub(self, rel: str) -> Store:
        return Store.on(self.fs, self.path(rel), join(self.uri, rel))

    # ── queries ──────────────────────────────────────────────────────────────────────

    def _type(self, rel: str) -> pafs.FileType:
        return self.fs.get_file_info(self.path(rel)).type

    def exists(self, rel: str = "") -> bool:
        return self._type(rel) != pafs.FileType.NotFound

    def is_file(self, rel: str) -> bool:
        return self._type(rel) == pafs.FileType.File

    def is_dir(self, rel: str = "") -> bool:
        return self._type(rel) == pafs.FileType.Directory

    def size(self, rel: str) -> int:
        return int(self.fs.get_file_info(self.path(rel)).size)

    def list_files(self, rel: str = "", recursive: bool = False) -> list[str]:
        """Sorted names of the files under ``rel`` (relative to it), hidden names skipped."""
        base = self.path(rel)
        sel = pafs.FileSelector(base, allow_not_found=True, recursive=recursive)
        out = []
        for info in self.fs.get_file_info(sel):
            if info.type != pafs.FileType.File:
                continue
            name = info.path[len(base) :].lstrip("/")
            if not any(part.startswith(".") for part in name.split("/")):
                out.append(name)
        return sorted(out)

    def list_dirs(self, rel: str = "") -> list[str]:
        sel = pafs.FileSelector(self.path(rel), allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(sel)
                      if i.type == pafs.FileType.Directory and not i.base_name.startswith("."))  # fmt: skip

    # ── reads ────────────────────────────────────────────────────────────────────────

    def read_bytes(self, rel: str) -> bytes:
        if not self.is_file(rel):
            raise FileNotFoundError(f"{self.where(rel)}: no such file")
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def sha256(self, rel: str) -> str:
        """SHA-256 hex of the file ``rel``, streamed (never the whole file in memory)."""
        from ogi_ray.canonical import stream_sha256

        with self.fs.open_input_stream(self.path(rel)) as f:
            return stream_sha256(f)

    def open_input(self, rel: str) -> Any:
        """A random-access file (``read_at(n, offset)``, ``seek``/``read``): range reads."""
        if not self.is_file(rel):
            raise FileNotFoundError(f"{self.where(rel)}: no such file")
        return self.fs.open_input_file(self.path(rel))

    # ── writes ───────────────────────────────────────────────────────────────────────

    def makedirs(self, rel: str = "") -> None:
        if self.is_local:  # object stores have no folders; creating one is a no-op there
            self.fs.create_dir(self.path(rel), recursive=True)

    @contextlib.contextmanager
    def open_output(self, rel: str) -> Iterator[BinaryIO]:
        """A stream to ``rel`` that appears whole when the block ends (and not at all if
        it raises)."""
        final = self.path(rel)
        parent = final.rpartition("/")[0]
        if not self.is_local:
            with self.fs.open_output_stream(final) as f:  # one multipart upload: atomic
                yield f
            return
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{final.rpartition('/')[2]}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                yield f  # type: ignore[misc]
                f.flush()
                os.fsync(f.fileno())  # a crash must not leave a hole behind the rename
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Write ``data`` to ``rel`` all at once (see the module docstring)."""
        with self.open_output(rel) as f:
            f.write(data)

    def delete_file(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path(rel))

    def delete_dir(self, rel: str) -> None:
        """Remove ``rel`` and everything under it (nothing when it does not exist)."""
        if self.exists(rel):
            self.fs.delete_dir(self.path(rel))
