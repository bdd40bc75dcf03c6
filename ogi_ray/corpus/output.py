"""The corpus output folder: refuse what is not ours, stage, then replace atomically.

    check_out(OUT, overwrite)   before Ray starts: OUT absent or empty, or a corpus this
                                command wrote (a manifest.json, or the ``.ogi-corpus``
                                marker a build leaves); anything else needs --overwrite
    staging(OUT)                OUT/.staging-<id>/: every file of the new corpus is written
                                here first (by the Ray workers, at its final relative name)
    commit(OUT, stage, files)   only once the new corpus is complete: remove the old
                                manifest (no reader trusts a half-replaced folder), move
                                each new file to its name, delete the previous corpus'
                                files that the new one does not reuse, write manifest.json
                                last (one PUT on S3, a rename locally)
    abort(OUT, stage)           a failed build removes its staging folder (and OUT, if the
                                build created it and nothing else is there)

Files the build did not write are never deleted: only the staging folder, and files the
previous manifest lists. The same code runs on a local folder and on ``s3://`` (where a
move is a copy and a delete, and the manifest's single PUT is what makes it atomic).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from ogi_ray.config import ConfigError
from ogi_ray.corpus import fsio
from ogi_ray.corpus.manifest import MANIFEST

MARKER = ".ogi-corpus"
MARKER_TEXT = b"written by `ogi corpus build`; safe to rebuild into (files other builds wrote stay)\n"


@dataclass
class OutDir:
    uri: str
    created: bool  # the build creates the folder (so a failure may remove it)
    previous: list[str]  # files of the corpus being replaced (relative), from its manifest


def check_out(out: str, overwrite: bool, field: str = "--out") -> OutDir:
    """Validate the output location (no writes); raise ConfigError naming ``field``."""
    uri = fsio.absolute(out)
    try:
        names = list(fsio.walk_names(uri)) if fsio.exists(uri) else None
    except OSError as e:
        raise ConfigError("<arguments>", field, f"cannot reach {uri}: {e}") from e
    if names is None:
        return OutDir(uri, True, [])
    import pyarrow.fs as pafs

    if fsio.info(uri).type == pafs.FileType.File:
        raise ConfigError("<arguments>", field, f"{uri} is a file, not a folder")
    previous = _previous_files(uri) if MANIFEST in names else None
    ours = previous is not None or MARKER in names
    if names and not ours and not overwrite:
        raise ConfigError("<arguments>", field,
                          f"{uri} is not empty and is not a corpus this command wrote ({len(names)} files, "
                          f"e.g. {sorted(names)[0]}); choose another folder or pass --overwrite "
                          "(which writes the corpus there and deletes nothing else)")  # fmt: skip
    return OutDir(uri, False, previous or [])


def _previous_files(uri: str) -> list[str] | None:
    """Files listed by the manifest at ``uri``, or None if it is not a corpus manifest."""
    try:
        m = json.loads(fsio.read_bytes(fsio.join(uri, MANIFEST)))
        files = [e["path"] for e in m["shards"] + m.get("heldout_shards", [])]
        return files + [m["tokenizers"]["text"]["file"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def staging(out: OutDir) -> str:
    """Create ``OUT/.staging-<id>`` (and the marker, so a crashed build can be rerun)."""
    stage = fsio.join(out.uri, f".staging-{uuid.uuid4().hex[:12]}")
    fsio.write_bytes(fsio.join(out.uri, MARKER), MARKER_TEXT)
    return stage


def commit(out: OutDir, stage: str, files: list[str], manifest_text: str) -> None:
    """Move the staged ``files`` (relative names) into OUT and write the manifest last."""
    fsio.delete(fsio.join(out.uri, MANIFEST))
    for rel in files:
        fsio.move(fsio.join(stage, rel), fsio.join(out.uri, rel))
    for rel in sorted(set(out.previous) - set(files)):
        fsio.delete(fsio.join(out.uri, rel))
    fsio.write_bytes(fsio.join(out.uri, MANIFEST), manifest_text.encode("utf-8"))
    fsio.delete(stage)


def abort(out: OutDir, stage: str) -> None:
    fsio.delete(stage)
    if out.created and set(fsio.walk_names(out.uri)) <= {MARKER}:
        fsio.delete(out.uri)
