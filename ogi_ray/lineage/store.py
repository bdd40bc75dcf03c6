"""Lineage storage through ``pyarrow.fs``: a local folder by default, any pyarrow URI else.

    Store("runs/demo/lineage")            LocalFileSystem, the path resolved
    Store("file:///abs/runs/demo/lineage") the same folder through a URI
    Store("s3://bucket/runs/demo/lineage") S3 (or gs://, hdfs://, ... as pyarrow supports)

Every write goes to a hidden temporary name beside the target, then ``fs.move`` onto it:
on a local disk that is a rename (atomic; the data is fsync'ed first), on an object store
the object appears whole. Readers therefore see the old bytes or the new, never a part.
Names starting with ``.`` (temporaries, Ray's markers) are never listed.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow.fs as pafs


class Store:
    """A folder in some pyarrow filesystem; paths below it are '/'-separated relative names."""

    def __init__(self, root: str | Path) -> None:
        root = str(root)
        if "://" in root:
            self.fs, path = pafs.FileSystem.from_uri(root)
        else:
            self.fs, path = pafs.LocalFileSystem(), str(Path(root).resolve())
        self.root = path.rstrip("/") or "/"
        self.uri = root

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def local_path(self, rel: str = "") -> Path | None:
        """The path on this machine's disk, or None for a remote filesystem."""
        return Path(self.path(rel)) if self.is_local else None

    def path(self, rel: str = "") -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def sub(self, rel: str) -> Store:
        child = Store.__new__(Store)
        child.fs, child.root = self.fs, self.path(rel)
        child.uri = f"{self.uri.rstrip('/')}/{rel}"
        return child

    def _type(self, rel: str) -> pafs.FileType:
        return self.fs.get_file_info(self.path(rel)).type

    def is_file(self, rel: str) -> bool:
        return self._type(rel) == pafs.FileType.File

    def is_dir(self, rel: str = "") -> bool:
        return self._type(rel) == pafs.FileType.Directory

    def read_bytes(self, rel: str) -> bytes:
        if not self.is_file(rel):
            raise FileNotFoundError(f"{self.path(rel)}: no such file")
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Write ``data`` to ``rel`` all at once (temporary name, then move)."""
        final = self.path(rel)
        parent, _, name = final.rpartition("/")
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        if self.is_local:  # pyarrow's stream does not fsync; a crash must not leave a hole
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.fs.move(tmp, final)

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
        return sorted(i.base_name for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.Directory)
