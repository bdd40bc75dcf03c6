"""Digits: what the frozen image encoder knows, by linear probe and zero-shot captions.

Data: scikit-learn's bundled copy of the UCI optical-recognition digits
(``sklearn.datasets.load_digits``: 1,797 8×8 images, 17 grey levels 0–16, labels 0–9).
``data_sha256`` is the SHA-256 of the images as uint8 (1797·8·8 bytes, row-major)
followed by the labels as int64 little-endian: the exact values used.

    8×8 levels ─► dark ink on white, uint8 RGB ─► corpus image patches (resized to the
    manifest's size, as photos are) ─► backbone on the img2 slots (the unmasked view the
    InfoNCE and align objectives train) ─► pooled h (N, D) and align latent (N, D)
    probe:     sample i is test iff i % test_every == 0 (a fixed split) ─► standardise on
               train ─► multinomial logistic regression (L-BFGS) ─► test accuracy
    zero-shot: caption prompts per class ("the number seven", ...) ─► pooled text latents,
               normalised and averaged over templates (CLIP's prompt ensemble) ─► argmax
               cosine ─► accuracy, when the model has the align heads
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ogi_ray.evals.common import LoadedModel, patch_config, sha256_bytes
from ogi_ray.evals.sample import image_latents, text_latents

NAME = "digits"
VERSION = "1"
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(kw_only=True)
class Config:
    test_every: int = 5  # sample i is in the test split iff i % test_every == 0 (360 of 1797)
    max_samples: int | None = None  # the first N samples only (quick runs); None = all
    C: float = 1.0  # inverse L2 strength of the probe
    max_iter: int = 1000
    zero_shot: bool = True
    templates: list[str] = field(default_factory=lambda: ["{digit}", "the number {word}", "a handwritten digit {word}"])
    batch_size: int = 256


def load(config: Config) -> tuple[np.ndarray, np.ndarray]:
    """(N, 8, 8) uint8 levels 0–16 and (N,) int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images, labels = d.images.astype(np.uint8), d.target.astype(np.int64)
    n = config.max_samples or len(labels)
    return images[:n], labels[:n]


def data_sha256(lm: LoadedModel | None, config: Config) -> str:
    images, labels = load(Config())  # the whole set, whatever max_samples
    return sha256_bytes(np.ascontiguousarray(images).tobytes() + labels.astype("<i8").tobytes())


def skip_reason(lm: LoadedModel, config: Config) -> str | None:
    return None if lm.cfg.n_img else "the model has no image slots (n_img = 0)"


def to_rgb(levels: np.ndarray) -> np.ndarray:
    """(8, 8) levels 0–16 → (8, 8, 3) uint8, ink 16 black on white 0 (as printed glyphs)."""
    grey = np.rint(255.0 - levels.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def split(n: int, test_every: int) -> tuple[np.ndarray, np.ndarray]:
    test = np.arange(n) % test_every == 0
    return np.flatnonzero(~test), np.flatnonzero(test)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 *, C: float = 1.0, max_iter: int = 1000) -> float:  # fmt: skip
    """Test accuracy of a multinomial logistic regression on standardised features.

    One BLAS thread (threadpoolctl), so the fit is the same bits every run."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        scaler = StandardScaler().fit(train_x)
        clf = LogisticRegression(C=C, max_iter=max_iter).fit(scaler.transform(train_x), train_y)
        pred = clf.predict(scaler.transform(test_x))
    return float(np.mean(pred == test_y))


def zero_shot_accuracy(img_lat: torch.Tensor, class_lat: torch.Tensor, labels: np.ndarray) -> float:
    """img_lat (N, D), class_lat (K, D) → accuracy of argmax cosine over the K classes."""
    sims = F.normalize(img_lat.double(), dim=-1) @ F.normalize(class_lat.double(), dim=-1).T  # (N, K)
    return float(np.mean(torch.argmax(sims, dim=1).numpy() == labels))


def class_latents(lm: LoadedModel, templates: list[str]) -> torch.Tensor:
    """(10, D): per class, the mean over templates of the normalised caption latents."""
    bpe = lm.tokenizer
    texts = [t.format(digit=k, word=WORDS[k]) for k in range(10) for t in templates]
    lat = text_latents(lm.model, lm.cfg, [bpe.encode(s) + [bpe.eos_id] for s in texts])  # (10·T, D)
    return F.normalize(lat.double(), dim=-1).view(10, len(templates), -1).mean(1)


def run(lm: LoadedModel, config: Config) -> dict[str, float]:
    images, labels = load(config)
    feats, lats = image_latents(lm.model, lm.cfg, [to_rgb(im) for im in images], patch_config(lm.manifest),
                                batch_size=config.batch_size)  # fmt: skip
    x = feats.double().numpy()
    tr, te = split(len(labels), config.test_every)
    scores = {"digits/probe_acc": linear_probe(x[tr], labels[tr], x[te], labels[te], C=config.C,
                                               max_iter=config.max_iter)}  # fmt: skip
    if config.zero_shot and "align" in lm.cfg.objectives:
        scores["digits/zeroshot_acc"] = zero_shot_accuracy(lats[te], class_latents(lm, config.templates), labels[te])
    return scores
