"""Keys, config and opening: what makes a backend a repository, and what opens one.

:func:`create` writes a new repository's key file (when it is encrypted) and then its config, last:
a repository without a config does not exist yet. :func:`load` reads the config, asks for the
password only when the repository is encrypted, opens a key file with it and checks the config's
MAC. The ``Repository`` facade (repository.py) calls them from ``init`` and ``open``; key files are
described in SPEC.md section 7.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
import time
from collections.abc import Callable

from chunkstore import crypto
from chunkstore.backends.base import Backend, FileType, Handle
from chunkstore.chunker import ChunkerParams, GearTable
from chunkstore.config import RepoConfig
from chunkstore.errors import (
    CorruptMetadata,
    NotFound,
    RepositoryExists,
    RepositoryNotFound,
    UsageError,
    WrongPassword,
)
from chunkstore.metadata import format_errors
from index.ids import Digest

__all__ = ["PasswordSource", "create", "gear_table", "load", "write_key"]

#: A password, or a function that produces one when (and only when) it is needed.
PasswordSource = bytes | Callable[[], bytes] | None
#: Key files larger than this are not key files (skipped without being read).
_MAX_KEY_FILE = 64 * 1024


def create(
    backend: Backend,
    *,
    password: bytes | None,
    chunker: ChunkerParams | None,
    pack_size: int,
    compression_level: int,
    kdf: crypto.KdfParams,
    keys_from: tuple[RepoConfig, crypto.MasterKey | None] | None = None,
) -> tuple[RepoConfig, crypto.MasterKey | None]:
    """Write a new repository (encrypted when ``password`` is given); its config and master key.

    ``keys_from``: the config and master key of an open repository whose key and chunker
    parameters the new one takes (it must be encrypted exactly when that one is).
    """
    master: crypto.MasterKey | None = None
    gear: str | None = None
    if keys_from is not None:
        source, source_master = keys_from
        if source.encrypted != (password is not None):
            raise UsageError(
                "a repository made with the keys of an encrypted repository must be encrypted "
                "too (and one made from an unencrypted repository must not be): "
                + ("give a password" if source.encrypted else "drop --encrypt")
            )
        master = source_master
        chunker = source.chunker
        gear = source.gear  # same key and kind: the same table, the same cuts
    elif password is not None:
        master = crypto.MasterKey.generate()
    try:
        backend.stat(Handle.config())
    except NotFound:
        pass
    else:
        raise RepositoryExists(f"a repository already exists at {backend.location}")
    config = RepoConfig.new(
        os.urandom(32),
        encrypted=password is not None,
        chunker=chunker or ChunkerParams(),
        pack_size=pack_size,
        compression_level=compression_level,
        gear=gear,
    )
    backend.create()
    if master is not None and password is not None:
        write_key(backend, master, password, config.repo_id, kdf)
    # The config is written last: a repository without config does not exist yet.
    backend.save(Handle.config(), config.encode(master.mac if master else None))
    return config, master


def load(backend: Backend, password: PasswordSource) -> tuple[RepoConfig, crypto.MasterKey | None]:
    """The config of the repository at ``backend`` and, when it is encrypted, its master key."""
    try:
        raw = backend.load(Handle.config())
    except NotFound:
        raise RepositoryNotFound(
            f"no chunkstore repository at {backend.location}; create one with 'chunkstore init'"
        ) from None
    with format_errors(f"repository config at {backend.location}"):
        config = RepoConfig.decode(raw)
    if not config.encrypted:
        return config, None
    if password is None:
        raise WrongPassword("this repository is encrypted: a password is required")
    master = _open_key(backend, config, password() if callable(password) else password)
    if not RepoConfig.verify_mac(raw, master.mac):
        raise CorruptMetadata(
            "the repository config fails its MAC: it was altered; restore it from a copy"
        )
    return config, master


def write_key(
    backend: Backend,
    master: crypto.MasterKey,
    password: bytes,
    repo_id: bytes,
    kdf: crypto.KdfParams,
) -> Digest:
    """Store a key file opening ``master`` with ``password``; returns its id."""
    data = crypto.create_key_file(
        master,
        password,
        repo_id,
        params=kdf,
        host=socket.gethostname(),
        user=getpass.getuser(),
        created_ns=time.time_ns(),
    )
    key_id = Digest("sha256", hashlib.sha256(data).digest())
    backend.save(Handle(FileType.KEY, key_id.hex), data)
    return key_id


def _open_key(backend: Backend, config: RepoConfig, password: bytes) -> crypto.MasterKey:
    keys = sorted(backend.list(FileType.KEY), key=lambda f: f.handle.name)
    if not keys:
        raise WrongPassword("the repository is encrypted but has no key files")
    for info in keys:
        if info.size > _MAX_KEY_FILE:
            continue
        try:
            return crypto.open_key_file(backend.load(info.handle), password, config.repo_id)
        except WrongPassword:
            continue
    raise WrongPassword("wrong password, or the key file is damaged")


def gear_table(config: RepoConfig, master: crypto.MasterKey | None) -> GearTable:
    """The chunker's gear table: keyed by the MAC key when the config says so."""
    if config.gear == "keyed":
        if master is None:  # RepoConfig refuses a keyed table without encryption
            raise UsageError("a keyed chunker table needs the repository's key")
        return GearTable.keyed(master.mac)
    return GearTable.standard()
