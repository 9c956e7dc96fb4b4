"""ProxyDB: users' long-lived credentials (from PKCS#12 uploads), encrypted at rest.

A row holds a user's certificate chain and private key as one AES-256-GCM ciphertext; the key of
that cipher lives outside the database, in a file of the server (``SecretBox``), so a copy of the
database (a dump, a backup, a replica) does not hold a usable credential. The row's DN is bound to
its ciphertext as associated data: a ciphertext moved to another user's row does not decrypt.
Nothing here ever writes the plain key anywhere: it exists only in memory, between ``seal`` and
``open``.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Column, Index, LargeBinary, MetaData, String, Table, delete, insert, select
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection

from vmdirac.core.db import BaseDB, UTCDateTime, transaction, utcnow
from vmdirac.core.exceptions import NotFound, SecurityError

metadata = MetaData()
Blob = LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql")

credentials = Table(
    "pm_Credentials", metadata,
    Column("UserDN", String(255), primary_key=True),
    Column("UserName", String(64), nullable=False),
    Column("VO", String(64), nullable=False),           # the uploader's VO when uploading
    Column("UserGroup", String(64), nullable=False, default=""),   # "" = any of the user's groups
    Column("Issuer", String(255), nullable=False),
    Column("NotAfter", UTCDateTime, nullable=False),
    Column("Uploaded", UTCDateTime, nullable=False),
    Column("Sealed", Blob, nullable=False),             # version byte, nonce, AES-GCM ciphertext
    Index("pm_Credentials_VO", "VO"),
)

_VERSION = b"\x01"
KEY_BYTES = 32


class SecretBox:
    """AES-256-GCM with a key kept in a file readable by the server's account only, made on first
    use. Every host running the ProxyManager on one database needs the same file (copy it)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._aead: AESGCM | None = None

    def _key(self) -> AESGCM:
        if self._aead is None:
            self._aead = AESGCM(self._load_or_create())
        return self._aead

    def _load_or_create(self) -> bytes:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:   # O_EXCL: two processes starting together cannot both make one
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(KEY_BYTES))
        mode = self.path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecurityError(f"{self.path} is readable by others (mode {stat.S_IMODE(mode):o}): "
                                "make it 0600 before the ProxyManager uses it")
        key = self.path.read_bytes()
        if len(key) != KEY_BYTES:
            raise SecurityError(f"{self.path} is not a {KEY_BYTES}-byte key")
        return key

    def seal(self, plain: bytes, bound_to: str) -> bytes:
        nonce = secrets.token_bytes(12)
        return _VERSION + nonce + self._key().encrypt(nonce, plain, bound_to.encode())

    def open(self, sealed: bytes, bound_to: str) -> bytes:
        if sealed[:1] != _VERSION or len(sealed) < 30:
            raise SecurityError("stored credential in an unknown format")
        try:
            return self._key().decrypt(sealed[1:13], sealed[13:], bound_to.encode())
        except InvalidTag as e:
            raise SecurityError(f"stored credential of {bound_to} cannot be decrypted with {self.path} "
                                "(another server's key, or tampered)") from e


@dataclass(frozen=True)
class StoredCredential:
    dn: str
    username: str
    vo: str
    group: str
    issuer: str
    not_after: dt.datetime
    uploaded: dt.datetime

    def to_wire(self) -> dict:
        return {"DN": self.dn, "UserName": self.username, "VO": self.vo, "Group": self.group,
                "Issuer": self.issuer, "NotAfter": self.not_after, "Uploaded": self.uploaded}


_INFO = [credentials.c[n] for n in ("UserDN", "UserName", "VO", "UserGroup", "Issuer", "NotAfter", "Uploaded")]


class ProxyDB(BaseDB):
    metadata = metadata

    def __init__(self, engine, box: SecretBox) -> None:
        super().__init__(engine)
        self.box = box

    @transaction
    def store(self, conn: Connection, info: StoredCredential, pem: bytes) -> None:
        """Store (replace) a user's credential; ``pem`` (chain and key) is sealed before the SQL."""
        sealed = self.box.seal(pem, info.dn)
        conn.execute(delete(credentials).where(credentials.c.UserDN == info.dn))
        conn.execute(insert(credentials).values(
            UserDN=info.dn, UserName=info.username, VO=info.vo, UserGroup=info.group, Issuer=info.issuer,
            NotAfter=info.not_after, Uploaded=info.uploaded or utcnow(), Sealed=sealed))

    @transaction(write=False)
    def infos(self, conn: Connection, dn: str | None = None, vo: str | None = None) -> list[StoredCredential]:
        q = select(*_INFO).order_by(credentials.c.UserDN)
        if dn is not None:
            q = q.where(credentials.c.UserDN == dn)
        if vo is not None:
            q = q.where(credentials.c.VO == vo)
        return [StoredCredential(*row) for row in conn.execute(q)]

    @transaction(write=False)
    def load(self, conn: Connection, dn: str) -> tuple[StoredCredential, bytes]:
        """The credential of ``dn`` and its PEM (chain and key), decrypted in memory."""
        row = conn.execute(select(*_INFO, credentials.c.Sealed).where(credentials.c.UserDN == dn)).first()
        if row is None:
            raise NotFound(f"no credential stored for {dn}", dn=dn)
        return StoredCredential(*row[:-1]), self.box.open(row[-1], dn)

    @transaction
    def remove(self, conn: Connection, dn: str) -> bool:
        return conn.execute(delete(credentials).where(credentials.c.UserDN == dn)).rowcount > 0
