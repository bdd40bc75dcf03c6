"""The plain PyTorch model: one multimodal transformer and its objectives.

``build(cfg)`` returns a ``MultimodalTransformer``; the token layout is in ``layout``,
objectives in ``objectives``. This package imports neither Ray nor torch.distributed
(parallelism is applied from outside by ``ogi_ray.parallel``). Importing the config
alone does not import torch, so the planners stay cheap.
"""

from typing import Any

from ogi_ray.model.config import PRESETS, ModelConfig, preset


def build(cfg: ModelConfig) -> Any:
    from ogi_ray.model.transformer import MultimodalTransformer

    return MultimodalTransformer(cfg)


def __getattr__(name: str) -> Any:
    if name == "MultimodalTransformer":
        from ogi_ray.model.transformer import MultimodalTransformer

        return MultimodalTransformer
    raise AttributeError(name)


__all__ = ["PRESETS", "ModelConfig", "MultimodalTransformer", "build", "preset"]
