"""The plain PyTorch model: one multimodal transformer and its objectives.

``build(cfg)`` returns a ``MultimodalTransformer``; objectives live in ``objectives``.
This package imports neither Ray nor torch.distributed (parallelism is applied from
outside by ``ogi_ray.parallel``).
"""

from ogi_ray.model.config import PRESETS, ModelConfig, preset
from ogi_ray.model.transformer import MultimodalTransformer


def build(cfg: ModelConfig) -> MultimodalTransformer:
    return MultimodalTransformer(cfg)


__all__ = ["PRESETS", "ModelConfig", "MultimodalTransformer", "build", "preset"]
