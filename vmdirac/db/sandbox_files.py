"""The SandboxStore's files on disk, beside ``SandboxMetadataDB``'s rows: its options, uploads
arriving (hashed as they are written, in a private directory) and their place once accepted,
``<BasePath>/<group>/<owner>/<sha256[:2]>/<sha256>.tar[.gz|.bz2|.xz]``."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from vmdirac.core.config import Snapshot
from vmdirac.core.exceptions import NotFound
from vmdirac.db.sandbox_metadata_db import SandboxInfo

log = logging.getLogger(__name__)

OPTIONS_PATH = "Systems/WorkloadManagement/Services/SandboxStore"
MiB = 1024 * 1024
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")   # owner and group: path components


@dataclass(frozen=True)
class SandboxStoreOptions:
    """``Systems/WorkloadManagement/Services/SandboxStore``."""

    BasePath: str = ""                 # default: <root>/sandboxes
    LocalSE: str = "ProductionSandboxSE"
    MaxSandboxSizeMiB: float = 10.0    # DIRAC's default
    MaxUnpackedSizeMiB: float = 1024.0  # what the archive may expand to (a gzip bomb stops here)
    Module: str = ""
    Enabled: bool = True

    @property
    def max_bytes(self) -> int:
        return int(self.MaxSandboxSizeMiB * MiB)


def store_options(snapshot: Snapshot) -> SandboxStoreOptions:
    return snapshot.options(SandboxStoreOptions, OPTIONS_PATH)


# ---------------------------------------------------------------- files

class Incoming:
    """An upload being received: a temporary file beside the store, hashed as it is written.

    Written from the thread pool and discarded from the IOLoop when the client goes away: the
    lock keeps the two apart. Once ``moved`` into the store it is never deleted from here.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=directory)
        self.path = Path(name)
        self._fh: BinaryIO | None = os.fdopen(fd, "wb")
        self._digest = hashlib.sha256()
        self._lock = threading.Lock()
        self.size = 0
        self.moved = False

    def write(self, chunk: bytes) -> None:
        with self._lock:
            if self._fh is None:
                raise ValueError("the upload was discarded")
            self._fh.write(chunk)
            self._digest.update(chunk)
            self.size += len(chunk)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.flush()
                os.fsync(self._fh.fileno())  # on disk before it is renamed and recorded
                self._fh.close()
                self._fh = None

    def discard(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            if not self.moved:
                self.path.unlink(missing_ok=True)


class SandboxFiles:
    """The sandbox files under ``BasePath``: content-addressed per owner, written atomically."""

    INCOMING = ".incoming"

    def __init__(self, base: Path) -> None:
        self.base = Path(base).absolute()

    @classmethod
    def configured(cls, opts: SandboxStoreOptions, root: Path) -> SandboxFiles:
        return cls(Path(opts.BasePath).expanduser() if opts.BasePath else Path(root) / "sandboxes")

    @staticmethod
    def pfn_for(group: str, owner: str, checksum: str, suffix: str) -> str:
        return f"/{group}/{owner}/{checksum[:2]}/{checksum}{suffix}"

    def path_of(self, pfn: str) -> Path:
        path = (self.base / pfn.lstrip("/")).resolve()
        if not path.is_relative_to(self.base.resolve()) or pfn.startswith(f"/{self.INCOMING}"):
            raise NotFound(f"sandbox path {pfn} is not in this store")
        return path

    def incoming(self) -> Incoming:
        return Incoming(self.base / self.INCOMING)

    def place(self, incoming: Incoming, pfn: str) -> None:
        """Move a received upload to ``pfn`` (atomic rename; a file of the same content there is
        simply replaced). Done already when the transaction around it is retried."""
        if incoming.moved:
            return
        target = self.path_of(pfn)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(incoming.path, target)
        incoming.moved = True
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)

    def open(self, info: SandboxInfo) -> BinaryIO:
        try:
            return open(self.path_of(info.pfn), "rb")
        except FileNotFoundError as e:
            raise NotFound(f"the file of sandbox {info.sb_id} is missing", sb_id=info.sb_id) from e

    def remove(self, info: SandboxInfo) -> bool:
        """Delete the file of ``info``; True when it is gone (or was already)."""
        try:
            self.path_of(info.pfn).unlink(missing_ok=True)
            return True
        except (OSError, NotFound) as e:
            log.warning("cannot delete the file of sandbox %s: %s", info.sb_id, e)
            return False

    def sweep_incoming(self, older_than_s: float) -> int:
        """Delete uploads left half-received (a server stopped mid-transfer)."""
        directory = self.base / self.INCOMING
        if not directory.is_dir():
            return 0
        limit = time.time() - older_than_s
        swept = 0
        for path in directory.glob("upload-*.part"):
            try:
                if path.stat().st_mtime < limit:
                    path.unlink()
                    swept += 1
            except FileNotFoundError:
                pass
        return swept
