"""User images with captions: WebDataset tar shards, or Parquet with image bytes + caption.

    path ─► items: every .tar (webdataset) / .parquet file, sorted
    WebDataset: tar members grouped by key (the name up to the first dot of its basename:
        ``0001.jpg`` + ``0001.txt`` [+ ``0001.json``]) ─► {doc_id: key, image, text}
    Parquet: one row = image bytes (``image_field``; a struct with ``bytes`` works too)
        + caption (``caption_field``) ─► {doc_id, image, text}

Images are decoded with Pillow to RGB uint8. An undecodable image, a key without image
or caption, and a truncated tar are BadRows naming the file and the key (or row); a
truncated tar ends its file. The caption is the ``txt`` member, or ``caption_key`` of the
``json`` member; ``license_field`` is read from the ``json`` member (WebDataset) or the
row (Parquet).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ogi_ray.corpus import fsio
from ogi_ray.corpus.sources import BadRow, RawSample
from ogi_ray.corpus.sources._records import meta_of, records, relpath
from ogi_ray.corpus.sources.text import check_paths, prepare_paths

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")


@dataclass(kw_only=True)
class Params:
    path: str
    format: Literal["webdataset", "parquet"] = "webdataset"
    image_field: str = "image"  # parquet: the column of encoded image bytes
    caption_field: str = "caption"  # parquet: caption column; webdataset: json key
    id_field: str = ""  # parquet: default <file>:<row>
    license_field: str = ""
    metadata_fields: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if not self.path:
            raise ValueError("path: required")


def prepare(params: Params, base: str) -> Params:
    return prepare_paths(params, base)


def check(params: Params) -> None:
    check_paths(params)


def items(params: Params) -> list[tuple[str, int]]:
    return fsio.list_files(params.path, (".tar",) if params.format == "webdataset" else (".parquet",))


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes → (H, W, 3) uint8 (Pillow; alpha composited on white)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, im)
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _sample(doc: str, img: bytes | None, caption: Any, rec: dict, params: Params, where: str) -> RawSample | BadRow:
    if not img:
        return BadRow("missing image", "no image", where)
    if not isinstance(caption, str) or not caption.strip():
        return BadRow("missing caption", "no caption text", where)
    try:
        image = decode_image(img)
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad bytes
        return BadRow("undecodable image", f"{type(e).__name__}: {e}", where)
    s: RawSample = {"doc_id": doc, "image": image, "text": caption}
    if params.license_field:
        s["license"] = rec.get(params.license_field) or ""
    if params.metadata_fields:
        s["meta"] = meta_of(rec, params.metadata_fields)
    return s


def _wds_groups(item: str) -> Iterator[tuple[str, dict[str, bytes]] | BadRow]:
    """(key, {ext: bytes}) per WebDataset sample, in tar order; a BadRow if truncated."""
    key, group, last = None, {}, "start of file"
    with fsio.open_input(item, stream=True, compression=None) as raw:
        try:
            with tarfile.open(fileobj=raw, mode="r|") as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    base = m.name.rsplit("/", 1)[-1]
                    k, _, ext = base.partition(".")
                    k = m.name[: len(m.name) - len(base)] + k
                    if k != key and key is not None:
                        yield key, group
                        group = {}
                    key, last = k, m.name
                    group[ext.lower()] = tar.extractfile(m).read()
        except (tarfile.TarError, EOFError, OSError) as e:
            yield BadRow("truncated tar", f"cannot read past {last} ({type(e).__name__}: {e})", f"member after {last}")
            return
    if key is not None:
        yield key, group


def read(item: str, params: Params) -> Iterator[RawSample | BadRow]:
    rel = relpath(item, params.path)
    if params.format == "parquet":
        need = tuple(f for f in (params.image_field, params.caption_field, params.id_field) if f)
        for label, rec in records(item, "parquet", need):
            if isinstance(rec, BadRow):
                yield rec
                continue
            img = rec[params.image_field]
            img = img.get("bytes") if isinstance(img, dict) else img
            doc = str(rec[params.id_field]) if params.id_field else f"{rel}:{label.split()[-1]}"
            yield _sample(doc, img, rec[params.caption_field], rec, params, label)
        return
    for g in _wds_groups(item):
        if isinstance(g, BadRow):
            yield g
            return
        key, parts = g
        meta = {}
        if "json" in parts:
            try:
                meta = json.loads(parts["json"])
            except json.JSONDecodeError as e:
                yield BadRow("malformed JSON", f"{key}.json: {e}", f"key {key}")
                continue
        caption = parts["txt"].decode("utf-8", "replace") if "txt" in parts else meta.get(params.caption_field)
        img = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
        yield _sample(key, img, caption, meta, params, f"key {key}")
