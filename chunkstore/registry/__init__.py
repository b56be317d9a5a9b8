"""Talking to OCI registries: references, credentials and the distribution-API client.

``reference`` parses ``host/name:tag@digest``; ``auth`` finds credentials and answers Basic and
Bearer challenges; ``client`` moves verified blobs, manifests and tags, over ``http`` (deadlines,
redirects, the status → error boundary, retries) and ``uploads`` (upload sessions, resumed and
restarted). Only this package imports httpx (an import-linter contract keeps it so).
"""

from __future__ import annotations

from chunkstore.registry.auth import Credentials, RegistryAuth, credentials_for
from chunkstore.registry.client import (
    DEFAULT_ACCEPT,
    MANIFEST_LIMIT,
    FetchedManifest,
    RegistryClient,
)
from chunkstore.registry.reference import Reference, is_loopback, parse_reference

__all__ = [
    "DEFAULT_ACCEPT",
    "MANIFEST_LIMIT",
    "Credentials",
    "FetchedManifest",
    "Reference",
    "RegistryAuth",
    "RegistryClient",
    "credentials_for",
    "is_loopback",
    "parse_reference",
]
