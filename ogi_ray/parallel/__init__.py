"""Parallelism applied from outside the plain model, and the one place that chooses
devices and collective backends (``device``)."""
