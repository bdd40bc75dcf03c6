"""Typed configuration: YAML files loaded into dataclasses, validated once.

Each component owns one dataclass (declared next to the component); this package only
knows how to turn a YAML mapping into such a dataclass and how to report a bad value:

    YAML file ──yaml.safe_load──► dict ──from_dict(Cls)──► Cls instance (or ConfigError)

Unknown keys, wrong types and failed ``validate()`` checks raise :class:`ConfigError`
naming the file and the dotted field, e.g. ``jobs/configs/demo.yaml: loop.steps: ...``,
all of a file's problems at once; a bad ``key=value`` override is blamed on the
``command line`` (``blame_overrides``).
Nothing here imports Ray or torch.
"""

from ogi_ray.config.loader import (
    COMMAND_LINE,
    ConfigError,
    apply_overrides,
    blame_overrides,
    from_dict,
    load_yaml,
    to_dict,
)

__all__ = ["COMMAND_LINE", "ConfigError", "apply_overrides", "blame_overrides", "from_dict", "load_yaml", "to_dict"]
