"""Prefect flows: one per stage plus the pipeline. Thin: they say what runs in which order."""

from flows import settings  # noqa: F401  (Prefect settings before Prefect is imported)
