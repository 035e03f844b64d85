"""Deployable policy bundles: export_bundle writes one, BundlePolicy loads it (checking manifest.json,
and manifest.sig when given a signing key), sign_bundle signs one (HMAC-SHA256 of the manifest)."""

from svrl_core.export.bundle import export_bundle, write_manifest
from svrl_core.export.runtime import BundleError, BundlePolicy, read_manifest, sign_bundle

__all__ = ["BundleError", "BundlePolicy", "export_bundle", "read_manifest", "sign_bundle", "write_manifest"]
