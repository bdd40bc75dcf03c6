"""The plain PyTorch model: one multimodal transformer and its objectives.

``build(cfg, seed)`` returns a ``MultimodalTransformer``; the token layout is in ``layout``,
objectives in ``objectives``. This package imports neither Ray nor torch.distributed
(parallelism is applied from outside by ``ogi_ray.parallel``). Importing the config
alone does not import torch, so the planners stay cheap.
"""

from typing import Any

from ogi_ray.model.config import PRESETS, ModelConfig, preset


def build(cfg: ModelConfig, seed: int = 0) -> Any:
    """The model with every parameter drawn from ``transformer.initial_value`` for
    ``seed``. Under ``with torch.device("meta")`` nothing is allocated (and nothing drawn):
    ``ogi_ray.parallel.materialize`` then fills each rank's shard from the same rule."""
    from ogi_ray.model.transformer import MultimodalTransformer

    model = MultimodalTransformer(cfg)
    model.init_weights(seed)
    return model


def __getattr__(name: str) -> Any:
    if name == "MultimodalTransformer":
        from ogi_ray.model.transformer import MultimodalTransformer

        return MultimodalTransformer
    raise AttributeError(name)


__all__ = ["PRESETS", "ModelConfig", "MultimodalTransformer", "build", "preset"]
