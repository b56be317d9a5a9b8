"""The chunkstore error tree and the exit code each error maps to.

::

    ChunkstoreError                     exit 1 unless a subclass says otherwise
    ├── UsageError                      bad arguments or input a user can fix (exit 2)
    ├── RepositoryNotFound              no repository at the given location (exit 10)
    ├── RepositoryExists                init over an existing repository (exit 2)
    ├── WrongPassword                   wrong password or damaged key file (exit 12)
    ├── UnsupportedFormat               data in a format version this code does not read (exit 13)
    ├── IntegrityError                  stored bytes fail verification (exit 14)
    │   ├── CorruptBlob                 a blob fails AEAD or its id check
    │   ├── CorruptPack                 a pack's header or framing is invalid
    │   ├── CorruptMetadata             a metadata object (index, record, config) is invalid
    │   ├── ShortRead                   a file is shorter than the range asked of it
    │   ├── DigestMismatch              downloaded bytes do not hash to the digest asked for
    │   └── SizeMismatch                downloaded bytes are more or fewer than expected
    ├── MissingObject                   something referenced is absent (exit 15)
    ├── LockConflict                    another process holds a conflicting lock (exit 11)
    ├── BackendError                    storage failed (exit 16)
    │   ├── NotFound                    a file is absent (also a MissingObject)
    │   │   └── RegistryObjectMissing   a registry answered 404 for a blob, manifest or upload
    │   ├── Transient                   a failure worth retrying (network, 5xx)
    │   │   └── RegistryUnavailable     5xx, 429, timeout, deadline or connection failure
    │   └── RegistryError               a registry refused a request (other 4xx)
    │       ├── AuthError               401/403, missing or unusable credentials
    │       └── ManifestTooLarge        a manifest over the 4 MiB limit
    └── CheckFailed                     ``check`` found problems (exit 17)

Messages say what failed and what to do next; they never contain secrets.
"""

from __future__ import annotations

__all__ = [
    "EXIT_CODES",
    "AuthError",
    "BackendError",
    "CheckFailed",
    "ChunkstoreError",
    "CorruptBlob",
    "CorruptMetadata",
    "CorruptPack",
    "DigestMismatch",
    "IntegrityError",
    "LockConflict",
    "ManifestTooLarge",
    "MissingObject",
    "NotFound",
    "RegistryError",
    "RegistryObjectMissing",
    "RegistryUnavailable",
    "RepositoryExists",
    "RepositoryNotFound",
    "ShortRead",
    "SizeMismatch",
    "Transient",
    "UnsupportedFormat",
    "UsageError",
    "WrongPassword",
    "exit_code_for",
]


class ChunkstoreError(Exception):
    """Base of every error chunkstore raises on purpose."""


class UsageError(ChunkstoreError):
    """Bad arguments or input that the user can correct."""


class RepositoryNotFound(ChunkstoreError):
    """No repository exists at the location given."""


class RepositoryExists(ChunkstoreError):
    """``init`` was asked to create a repository where one already exists."""


class WrongPassword(ChunkstoreError):
    """No key file opens with the password, or the key file is damaged."""


class UnsupportedFormat(ChunkstoreError):
    """Stored data uses a format version this code does not read."""


class IntegrityError(ChunkstoreError):
    """Stored bytes failed verification."""


class CorruptBlob(IntegrityError):
    """A blob failed authentication, decompression or its id check."""


class CorruptPack(IntegrityError):
    """A pack file's framing or header is invalid."""


class CorruptMetadata(IntegrityError):
    """An index file, record, config or metadata blob does not decode."""


class ShortRead(IntegrityError):
    """A file held fewer bytes than the range requested (truncated or damaged)."""


class MissingObject(ChunkstoreError):
    """A referenced blob or file does not exist."""


class LockConflict(ChunkstoreError):
    """Another process holds a lock that conflicts with this operation."""


class BackendError(ChunkstoreError):
    """The storage backend failed."""


class NotFound(BackendError, MissingObject):
    """A backend file does not exist."""


class Transient(BackendError):
    """A failure that may succeed when retried."""


class CheckFailed(ChunkstoreError):
    """``check`` found damage; the message summarises it."""


class DigestMismatch(IntegrityError):
    """Bytes received from a registry do not hash to the digest requested (or a header disagrees)."""


class SizeMismatch(IntegrityError):
    """Bytes received from a registry are more or fewer than the size expected."""


class RegistryObjectMissing(NotFound):
    """A registry answered 404: the blob, manifest, tag or upload session does not exist."""


class RegistryUnavailable(Transient):
    """A registry request failed in a way worth retrying (5xx, 429, timeout, reset, deadline).

    ``retry_after`` is the delay in seconds the registry asked for, when it sent ``Retry-After``.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        """``message`` names host and path; ``retry_after`` comes from a ``Retry-After`` header."""
        super().__init__(message)
        self.retry_after = retry_after


class RegistryError(BackendError):
    """A registry refused a request (a 4xx other than 404); the message carries its error code."""


class AuthError(RegistryError):
    """A registry refused the credentials (401/403), or they cannot be used safely or at all."""


class ManifestTooLarge(RegistryError):
    """A manifest is larger than the 4 MiB every registry must accept (and no more is read)."""


#: Exit code per error class; the most specific class wins. 0 is success, 1 an unexpected error.
EXIT_CODES: dict[type[ChunkstoreError], int] = {
    ChunkstoreError: 1,
    UsageError: 2,
    RepositoryExists: 2,
    RepositoryNotFound: 10,
    LockConflict: 11,
    WrongPassword: 12,
    UnsupportedFormat: 13,
    IntegrityError: 14,
    MissingObject: 15,
    BackendError: 16,
    NotFound: 15,
    CheckFailed: 17,
}


def exit_code_for(exc: BaseException) -> int:
    """The exit code for ``exc``: its most specific class in :data:`EXIT_CODES`, else 1."""
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1
