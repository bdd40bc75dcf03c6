"""Captioned images: scikit-image's bundled photos, captioned by their loaders' docstrings.

Each loader's first docstring line is its caption ("Chelsea the cat.", "Launch photo of
DSCOVR on Falcon 9 by SpaceX."). Licenses are CC0 or public domain per the docstrings'
Notes. Each photo yields several deterministic views (the whole image and crops), each
a sample whose caption names the view, so the small set still gives the mixer rows to
choose from.

params: ``names`` (list of loader names; default: the offline photos below),
``views`` (int, 1–6, default 6).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ogi_ray.corpus.sources import RawSample

# Loaders that read files inside the wheel (the others download, which fails offline).
PHOTOS = [
    "astronaut", "brick", "camera", "cat", "cell", "clock", "coffee", "coins",
    "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry",
    "logo", "microaneurysms", "moon", "page", "retina", "rocket", "text",
]  # fmt: skip

# (caption suffix, crop as fractions (top, left, height, width))
VIEWS = [
    ("", (0.0, 0.0, 1.0, 1.0)),
    (" Centre crop.", (0.2, 0.2, 0.6, 0.6)),
    (" Top-left crop.", (0.0, 0.0, 0.6, 0.6)),
    (" Top-right crop.", (0.0, 0.4, 0.6, 0.6)),
    (" Bottom-left crop.", (0.4, 0.0, 0.6, 0.6)),
    (" Bottom-right crop.", (0.4, 0.4, 0.6, 0.6)),
]


@dataclass(kw_only=True)
class Params:
    names: list[str] = field(default_factory=lambda: list(PHOTOS))
    views: int = 6

    def validate(self) -> None:
        if not 1 <= self.views <= len(VIEWS):
            raise ValueError(f"views: must be in 1..{len(VIEWS)}, got {self.views}")
        bad = sorted(set(self.names) - set(PHOTOS))
        if bad:
            raise ValueError(f"names: not offline skimage photos: {bad}")


def items(params: Params) -> list[str]:
    return sorted(params.names)


def _rgb(im: np.ndarray) -> np.ndarray:
    if im.dtype == bool:
        im = im.astype(np.uint8) * 255
    if im.ndim == 2:
        im = np.repeat(im[:, :, None], 3, axis=2)
    return np.ascontiguousarray(im[:, :, :3]).astype(np.uint8)


def read(item: str, params: Params) -> Iterator[RawSample]:
    import skimage.data

    loader = getattr(skimage.data, item)
    caption = loader.__doc__.strip().splitlines()[0].strip()
    image = _rgb(loader())  # (H, W, 3) uint8
    h, w = image.shape[:2]
    for i, (suffix, (t, left, fh, fw)) in enumerate(VIEWS[: params.views]):
        y0, x0 = int(t * h), int(left * w)
        crop = image[y0 : y0 + int(fh * h), x0 : x0 + int(fw * w)]
        yield {"doc_id": f"{item}#{i}", "text": caption + suffix, "image": crop}
