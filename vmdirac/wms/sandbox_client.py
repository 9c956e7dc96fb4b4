"""Sandboxes on the client side: make a tarball, upload it, download and safely unpack one.

Also the rules of what a sandbox tarball may hold (``check_tarball``), shared with the
SandboxStore service, which refuses at upload what the client refuses at extraction: absolute
paths, ``..``, links and devices. Transfers stream in chunks over HTTPS with the same TLS
context as ``RPCClient`` (``ClientCredentials.ssl_context()``), to the service's ``/upload`` and
``/download`` routes; errors come back as the typed exception the service sent.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import select
import sys
import tarfile
import tempfile
import urllib.parse
import zlib
from pathlib import Path
from typing import IO, Any, Callable, Literal

from vmdirac.core.client import ClientCredentials
from vmdirac.core.client import _unwrap  # the one envelope-to-exception translation
from vmdirac.core.exceptions import (
    ConfigurationError, InvalidArgument, NotFound, ServiceUnavailable, VMDiracError,
)

SERVICE = "WorkloadManagement/SandboxStore"
CHUNK = 256 * 1024
Progress = Callable[[int, int], None]
_CONTINUE_WAIT = 5.0  # seconds to wait for "100 Continue" before sending the body anyway

try:
    import lzma
    _DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (zlib.error, lzma.LZMAError)
except ImportError:  # pragma: no cover - Python built without lzma
    _DECOMPRESS_ERRORS = (zlib.error,)


# ---------------------------------------------------------------- what a sandbox may hold

def member_problem(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` may not be in a sandbox, or ``None`` when it may."""
    name = member.name
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "contains '..'"
    if member.issym():
        return f"is a symbolic link (to {member.linkname})"
    if member.islnk():
        return f"is a hard link (to {member.linkname})"
    if member.ischr() or member.isblk():
        return "is a device"
    if member.isfifo():
        return "is a FIFO"
    if not (member.isfile() or member.isdir()):
        return "is not a regular file or directory"
    return None


def check_tarball(path: Path, max_unpacked: int | None = None) -> list[tarfile.TarInfo]:
    """The members of the tar archive at ``path`` (plain, gzip, bzip2 or xz), every one checked.

    ``InvalidArgument`` naming the first bad member, when the file is not a readable tar
    archive, or when its contents add up to more than ``max_unpacked`` bytes.
    """
    members = []
    total = 0
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                problem = member_problem(member)
                if problem:
                    raise InvalidArgument(f"sandbox member {member.name!r} {problem}: refused",
                                          member=member.name)
                total += member.size
                if max_unpacked is not None and total > max_unpacked:
                    raise InvalidArgument(f"sandbox contents are over the {max_unpacked}-byte unpacked limit")
                members.append(member)
    except (tarfile.TarError, EOFError, OSError, *_DECOMPRESS_ERRORS) as e:
        raise InvalidArgument(f"not a readable tar archive ({e})") from e
    return members


def compression_suffix(path: Path) -> str:
    """``.tar``, ``.tar.gz``, ``.tar.bz2`` or ``.tar.xz``, from the file's first bytes."""
    with open(path, "rb") as fh:
        head = fh.read(6)
    if head.startswith(b"\x1f\x8b"):
        return ".tar.gz"
    if head.startswith(b"BZh"):
        return ".tar.bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return ".tar.xz"
    return ".tar"


# ---------------------------------------------------------------- tarballs

def make_tarball(paths: list[Path], base: Path, dest: Path | None = None) -> Path:
    """A gzip tarball of ``paths`` (files or directories), named relative to ``base``.

    A path outside ``base`` is stored under its own name, as DIRAC does. Symbolic links are
    stored as what they point to. The archive is reproducible (sorted, no timestamps in the
    gzip header, no owner names), so the same files give the same sandbox id. Written to
    ``dest`` or to a new temporary file; ``NotFound`` naming a missing file.
    """
    base = Path(base).absolute()
    entries: dict[str, Path] = {}
    for given in paths:
        path = given if Path(given).is_absolute() else base / given
        if not path.exists():
            raise NotFound(f"{given}: no such file", path=str(given))
        try:
            arcname = path.absolute().relative_to(base).as_posix()
        except ValueError:
            arcname = path.name
        if arcname in ("", "."):
            raise InvalidArgument(f"{given}: the base directory itself cannot be a sandbox entry")
        entries.setdefault(arcname, path)
    if not entries:
        raise InvalidArgument("no files to put in the sandbox")
    if dest is None:
        fd, name = tempfile.mkstemp(prefix="sandbox-", suffix=".tar.gz")
        os.close(fd)
        dest = Path(name)

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        problem = member_problem(info)
        if problem:
            raise InvalidArgument(f"{info.name} {problem}: it cannot go in a sandbox")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    try:
        with open(dest, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, dereference=True) as tar:
                for arcname in sorted(entries):
                    tar.add(str(entries[arcname]), arcname=arcname, filter=clean)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return dest


def extract_tarball(path: Path, dest_dir: Path) -> list[Path]:
    """Unpack a sandbox into ``dest_dir`` after checking every member; the files written."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    members = check_tarball(path)
    root = dest_dir.resolve()
    for m in members:
        # A symbolic link already in dest_dir could lead a member elsewhere.
        if not (root / m.name).resolve().is_relative_to(root):
            raise InvalidArgument(f"sandbox member {m.name!r} would land outside {dest_dir}: refused")
    with tarfile.open(path, "r:*") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest_dir, members=members, filter="data")
        else:  # pragma: no cover - Python before 3.11.4; the checks above still apply
            tar.extractall(dest_dir, members=members)
    return [dest_dir / m.name for m in members if m.isfile()]


# ---------------------------------------------------------------- where the service is

def sandbox_url(source: Any, action: Literal["upload", "download"] = "upload") -> str:
    """The upload or download URL from the SandboxStore service URL.

    ``source`` is a configuration ``Snapshot`` or ``ConfigStore`` (its
    ``Systems/WorkloadManagement/URLs/SandboxStore``), a service URL, or a list of them (the
    first is used): ``https://host:port/WorkloadManagement/SandboxStore`` gives
    ``https://host:port/WorkloadManagement/SandboxStore/upload``. An upload or download URL
    works as a service URL too, so the transfer functions accept either.
    """
    if isinstance(source, str):
        urls = [source]
    elif hasattr(source, "service_urls"):
        urls = source.service_urls(SERVICE)
    elif hasattr(source, "current"):
        urls = source.current.service_urls(SERVICE)
    else:
        urls = list(source)
    if not urls:
        raise ConfigurationError(f"no URL configured for {SERVICE}")
    parts = urllib.parse.urlsplit(urls[0])
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigurationError(f"bad {SERVICE} URL {urls[0]!r}: expected https://host:port/{SERVICE}")
    path = parts.path.rstrip("/")
    for known in ("/upload", "/download"):  # an upload or download URL given: its service URL
        if path.endswith(known):
            path = path[: -len(known)]
    return urllib.parse.urlunsplit(parts._replace(path=f"{path}/{action}", query=""))


# ---------------------------------------------------------------- transfers

def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def upload_sandbox(credentials: ClientCredentials, url: str, tar_path: Path,
                   progress: Progress | None = None, timeout: float = 300.0) -> str:
    """Upload the tarball at ``tar_path`` to ``url`` (the service URL or its ``/upload``);
    returns its sandbox id (``SB:<SE>|<path>``).

    The request says ``Expect: 100-continue``, so a refusal (too large, not allowed) arrives
    before the body is sent. ``progress(sent, total)`` is called as the bytes go.
    """
    tar_path = Path(tar_path)
    size = tar_path.stat().st_size
    fields = {"checksum": file_sha256(tar_path), "size": size, "name": tar_path.name}
    if credentials.delegate:  # a TrustedHost (the web portal) uploading for a user
        fields["extraCredentials"] = json.dumps(list(credentials.delegate))
    query = urllib.parse.urlencode(fields)
    conn, path = _connect(credentials, sandbox_url(url, "upload"), timeout)
    try:
        conn.putrequest("PUT", f"{path}?{query}", skip_accept_encoding=True)
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", str(size))
        conn.putheader("Accept", "application/json")
        conn.putheader("Expect", "100-continue")
        conn.endheaders()
        early = _early_answer(conn)
        if early is not None:
            return _unwrap(*early, f"upload of {tar_path.name}")
        sent = 0
        try:
            with open(tar_path, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    conn.send(chunk)
                    sent += len(chunk)
                    if progress is not None:
                        progress(sent, size)
        except (BrokenPipeError, ConnectionResetError) as e:
            # The server may have answered (and closed) before reading everything: read why.
            try:
                resp = conn.getresponse()
                return _unwrap(resp.status, resp.read(), f"upload of {tar_path.name}")
            except (OSError, http.client.HTTPException):
                raise ServiceUnavailable(f"upload of {tar_path.name}: the server closed the connection "
                                         f"after {sent} of {size} bytes") from e
        resp = conn.getresponse()
        return _unwrap(resp.status, resp.read(), f"upload of {tar_path.name}")
    except OSError as e:
        raise ServiceUnavailable(f"upload of {tar_path.name} to {url} failed: {e}") from e
    finally:
        conn.close()


def download_sandbox(credentials: ClientCredentials, url: str, sb_id: str, dest_dir: Path,
                     progress: Progress | None = None, timeout: float = 300.0) -> list[Path]:
    """Download sandbox ``sb_id`` and unpack it into ``dest_dir``; the files written."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".sandbox-", suffix=".part", dir=dest_dir)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            fetch_sandbox(credentials, url, sb_id, out, progress, timeout)
        return extract_tarball(tmp, dest_dir)
    finally:
        tmp.unlink(missing_ok=True)


def fetch_sandbox(credentials: ClientCredentials, url: str, sb_id: str, out: IO[bytes],
                  progress: Progress | None = None, timeout: float = 300.0) -> int:
    """Stream sandbox ``sb_id`` into ``out``, checking its length and checksum; the bytes read."""
    conn, path = _connect(credentials, sandbox_url(url, "download"), timeout)
    what = f"download of {sb_id}"
    try:
        conn.request("GET", f"{path}?{urllib.parse.urlencode({'sb': sb_id})}",
                     headers={"Accept": "application/octet-stream, application/json"})
        resp = conn.getresponse()
        if resp.status != 200 or resp.getheader("Content-Type", "").startswith("application/json"):
            _unwrap(resp.status, resp.read(), what)
            raise VMDiracError(f"{what}: the server sent no data (HTTP {resp.status})")
        total = int(resp.getheader("Content-Length") or 0)
        expected = resp.getheader("X-Sandbox-Checksum", "")
        digest = hashlib.sha256()
        received = 0
        while chunk := resp.read(CHUNK):
            out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            if progress is not None:
                progress(received, total)
    except (OSError, http.client.HTTPException) as e:
        raise ServiceUnavailable(f"{what} from {url} failed: {e}") from e
    finally:
        conn.close()
    if total and received != total:
        raise ServiceUnavailable(f"{what}: got {received} of {total} bytes")
    if expected and digest.hexdigest() != expected:
        raise VMDiracError(f"{what}: checksum mismatch (the data was damaged on the way)")
    return received


def _connect(credentials: ClientCredentials, url: str, timeout: float) -> tuple[http.client.HTTPSConnection, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigurationError(f"bad sandbox URL {url!r}: expected https://host:port/{SERVICE}/...")
    conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=timeout,
                                       context=credentials.ssl_context())
    try:
        conn.connect()
    except OSError as e:
        conn.close()
        raise ServiceUnavailable(f"{url}: cannot connect ({e.strerror or e})") from e
    return conn, parts.path


def _early_answer(conn: http.client.HTTPSConnection) -> tuple[int, bytes] | None:
    """After the headers: ``None`` to send the body ("100 Continue", or no word in time), else
    the final answer the server gave without reading the body (a refusal)."""
    sock = conn.sock
    if not sock.pending():
        readable, _, _ = select.select([sock], [], [], _CONTINUE_WAIT)
        if not readable:
            return None
    # Only this interim answer can be in flight: the server sends nothing more before the body.
    fp = sock.makefile("rb")
    try:
        status_line = fp.readline(65537).decode("iso-8859-1")
        fields = status_line.split(None, 2)
        if len(fields) < 2 or not fields[1].isdigit():
            raise ServiceUnavailable(f"unexpected answer to the upload: {status_line.strip()[:80]!r}")
        headers = http.client.parse_headers(fp)
        status = int(fields[1])
        if status == 100:
            return None
        return status, fp.read(int(headers.get("Content-Length") or 0))
    finally:
        fp.close()


# ---------------------------------------------------------------- progress

def progress_bar(stream: IO[str] | None = None, width: int = 30) -> Progress | None:
    """A ``progress(done, total)`` drawing one line on ``stream`` (stderr), or ``None`` when
    ``stream`` is not a terminal: logs and pipes get no bar."""
    stream = stream if stream is not None else sys.stderr
    if not stream.isatty():
        return None
    state = {"last": -1}

    def draw(done: int, total: int) -> None:
        pct = 100 if total <= 0 else min(100, done * 100 // total)
        if pct == state["last"]:
            return
        state["last"] = pct
        filled = width * pct // 100
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {pct:3d}% "
                     f"{done / 1048576:.1f}/{max(total, done) / 1048576:.1f} MiB")
        if pct >= 100:
            stream.write("\n")
        stream.flush()

    return draw
