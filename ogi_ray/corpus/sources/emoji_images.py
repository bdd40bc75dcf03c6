"""Captioned images: Noto Color Emoji glyphs rendered with Pillow, captioned by CLDR name.

Data: every fully-qualified emoji in the ``emoji`` package's ``EMOJI_DATA`` (3,963 in
emoji 2.16), sorted by code points, drawn from Debian's ``fonts-noto-color-emoji``
(``/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf``; a CBDT bitmap font, which only
loads at size 109) onto a transparent 136×136 canvas, composited on white and resized
to ``size``×``size`` RGB. Emoji newer than the font render fully transparent and are
skipped (33 with the bookworm font). The caption is the emoji package's English CLDR
short name with underscores as spaces ("grinning face", "thumbs up medium skin tone");
flags get CLDR's "flag: " prefix back ("flag: Japan").

License: Noto Color Emoji font OFL-1.1 and its images Apache-2.0; the names come from
Unicode CLDR (Unicode license). Install the font with ``apt-get install
fonts-noto-color-emoji`` (``scripts/setup_data.sh`` does it).

Items: batches by position in the (sub)sampled list, ``emoji:0000-0099``, so one Ray task
renders many glyphs. Renders are cached per batch as .npz under
``$OGI_CACHE_DIR/emoji`` (default ``~/.cache/ogi_ray``), keyed by params and versions.

params: ``max_items`` (int, default all: an evenly spaced subset of the emoji),
``batch_size`` (default 100), ``size`` (output side in px, default 64).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ogi_ray.corpus.sources import RawSample, spread
from ogi_ray.corpus.sources._cache import cache_dir, cached_npz, key_digest

FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FONT_SIZE = 109  # the only size at which Pillow can load this CBDT font
CANVAS = 136  # the glyph bitmap is 136×128; a square canvas keeps the aspect when resizing


@dataclass(kw_only=True)
class Params:
    max_items: int | None = None  # an evenly spaced subset of the emoji
    batch_size: int = 100
    size: int = 64

    def validate(self) -> None:
        for k in ("max_items", "batch_size", "size"):
            v = getattr(self, k)
            if v is not None and v < 1:
                raise ValueError(f"{k}: must be >= 1")


@functools.lru_cache(maxsize=1)
def _all_emoji() -> tuple[tuple[str, str], ...]:
    """(emoji, caption) for every fully-qualified emoji, sorted by code points."""
    import emoji

    fq = emoji.STATUS["fully_qualified"]
    out = [(e, caption(e, d["en"])) for e, d in emoji.EMOJI_DATA.items() if d.get("status") == fq]
    return tuple(sorted(out))


def _is_flag(glyph: str) -> bool:
    # Country flags are two regional-indicator letters; England/Scotland/Wales are a black
    # flag followed by tag characters (U+E0020..U+E007F).
    if len(glyph) == 2 and all(0x1F1E6 <= ord(c) <= 0x1F1FF for c in glyph):
        return True
    return (
        glyph[0] == "\U0001f3f4"
        and len(glyph) > 1
        and all(0xE0020 <= ord(c) <= 0xE007F for c in glyph[1:])
    )


def caption(glyph: str, name: str) -> str:
    """Caption from the emoji package's name (':thumbs_up:' -> 'thumbs up'). The package
    names flags by country alone (':Japan:'); CLDR says 'flag: Japan', which is kept."""
    text = name.strip(":").replace("_", " ").strip()
    return f"flag: {text}" if _is_flag(glyph) else text


def _selected(params: Params) -> tuple[tuple[str, str], ...]:
    return tuple(spread(list(_all_emoji()), params.max_items))  # spans faces, flags, objects


def items(params: Params) -> list[str]:
    n = len(_selected(params))
    bs = params.batch_size
    return [f"emoji:{lo:04d}-{min(lo + bs, n) - 1:04d}" for lo in range(0, n, bs)]


def _font() -> Any:  # a PIL FreeTypeFont; PIL is imported lazily
    from PIL import ImageFont

    if not FONT.is_file():
        raise FileNotFoundError(
            f"emoji_images: font {FONT} is missing: apt-get install fonts-noto-color-emoji"
        )
    return ImageFont.truetype(str(FONT), FONT_SIZE)


def render(glyph: str, size: int, font: object = None) -> np.ndarray | None:
    """size×size×3 uint8 render of ``glyph`` on white, or None if the font lacks it."""
    from PIL import Image, ImageDraw

    font = font or _font()
    im = Image.new("RGBA", (CANVAS, CANVAS), (255, 255, 255, 0))
    ImageDraw.Draw(im).text((0, (CANVAS - 128) // 2), glyph, font=font, embedded_color=True)
    if im.getchannel("A").getbbox() is None:  # nothing drawn: glyph newer than the font
        return None
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, im).convert("RGB")
    if size != CANVAS:
        rgb = rgb.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8)


def _render_batch(batch: list[tuple[str, str]], size: int) -> dict[str, np.ndarray]:
    font = _font()
    keep, images = [], []
    for i, (glyph, _caption) in enumerate(batch):
        im = render(glyph, size, font)
        if im is not None:
            keep.append(i)
            images.append(im)
    empty = np.zeros((0, size, size, 3), np.uint8)
    return {"index": np.asarray(keep, np.int64), "images": np.stack(images) if images else empty}


def _cached_batch(item: str, batch: list[tuple[str, str]], size: int) -> dict[str, np.ndarray]:
    import emoji
    import PIL

    key = {"glyphs": "".join(g for g, _ in batch), "size": size, "emoji": emoji.__version__,
           "pillow": PIL.__version__, "font_bytes": FONT.stat().st_size if FONT.is_file() else 0}
    path = cache_dir("emoji") / f"{item.replace(':', '_')}-{key_digest(key)}.npz"
    return cached_npz(path, lambda: _render_batch(batch, size))


def read(item: str, params: Params) -> Iterator[RawSample]:
    try:
        lo, hi = (int(x) for x in item.removeprefix("emoji:").split("-"))
    except ValueError:
        raise ValueError(f"emoji_images: item {item!r} is not 'emoji:<lo>-<hi>'") from None
    batch = list(_selected(params)[lo : hi + 1])
    out = _cached_batch(item, batch, params.size)
    for i, image in zip(out["index"].tolist(), out["images"], strict=True):
        glyph, caption = batch[i]
        cps = "-".join(f"{ord(c):04X}" for c in glyph)
        yield {"doc_id": f"emoji:{cps}", "text": caption, "image": image}
