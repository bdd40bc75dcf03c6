"""The one error type of the scaling planner.

It subclasses :class:`ogi_ray.config.ConfigError`, so the ``ogi`` entry point reports
every bad input (constants YAML, runs CSV, mixture file, CLI value) the same way:
``<file>: <field>: <what is wrong>``.
"""

from __future__ import annotations

from ogi_ray.config import ConfigError


class ScalingInputError(ConfigError):
    """A scaling input (file or argument) is missing, malformed or out of range."""
