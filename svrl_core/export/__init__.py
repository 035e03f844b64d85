"""Deployable policy bundles."""

from svrl_core.export.bundle import export_bundle
from svrl_core.export.runtime import BundleError, BundlePolicy, read_manifest

__all__ = ["BundleError", "BundlePolicy", "export_bundle", "read_manifest"]
