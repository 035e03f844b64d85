"""Deployable policy bundles."""

from svrl_core.export.bundle import export_bundle
from svrl_core.export.runtime import BundlePolicy

__all__ = ["BundlePolicy", "export_bundle"]
