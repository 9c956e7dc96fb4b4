"""cloud-init user data: a MIME multipart message with a ``text/cloud-config`` part (``write_files``:
the VM's credential, the CA certificates, the VM configuration) and a ``text/x-shellscript`` part
(the start script of ``vmdirac.contexts``, which starts the VM Monitor, which starts the pilot).

Clouds cap user data at 16 KiB (EC2, OpenStack's default). The parts travel as 7-bit text (PEM
and YAML are ASCII), so they cost what they weigh; a message over the limit is sent gzipped as
a whole, which cloud-init recognises by its magic number. Compressing one MIME part instead
would need base64 around the gzip stream, and PEM (itself base64) shrinks by about 1/4 under
gzip, which base64 gives back: no gain where the bytes are. Past the limit even compressed,
``UserDataTooLarge`` says which part weighs what.

``parse_user_data`` reads such user data back, as the local cloud's VM and the tests do.
"""

from __future__ import annotations

import base64
import email
import email.policy
import gzip
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

import yaml

from vmdirac.contexts import VMContext, VMFile, start_script, vm_files
from vmdirac.core.exceptions import ConfigurationError

MAX_USER_DATA = 16 * 1024
GZIP_TYPES = frozenset({"application/gzip", "application/x-gzip", "application/gzip-compressed",
                        "application/gzipped", "application/x-gzip-compressed"})


class UserDataTooLarge(ConfigurationError):
    """The user data exceeds what clouds accept, even compressed."""


class _Literal(str):
    """A string YAML writes as a ``|`` block (PEM stays readable in the user data)."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Literal, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|"))


def cloud_config(files: list[VMFile]) -> str:
    entries = []
    for f in files:
        entry: dict[str, Any] = {"path": f.path, "permissions": f"0{f.mode:o}", "owner": "root:root"}
        try:
            text = f.content.decode("ascii")
        except UnicodeDecodeError:
            text = None
        if text is not None and text.endswith("\n") and all(line == line.rstrip() for line in text.splitlines()):
            entry["content"] = _Literal(text)
        else:
            entry["encoding"] = "b64"
            entry["content"] = base64.b64encode(f.content).decode()
        entries.append(entry)
    return "#cloud-config\n" + yaml.dump({"write_files": entries}, Dumper=_Dumper, sort_keys=False, width=1000)


def _text_part(text: str, subtype: str, filename: str) -> MIMEText:
    try:
        text.encode("ascii")
        part = MIMEText(text, subtype, "us-ascii")     # 7bit: no base64 overhead
    except UnicodeEncodeError:
        part = MIMEText(text, subtype, "utf-8")
    part.add_header("Content-Disposition", "attachment", filename=filename)
    return part


def multipart(parts: list[tuple[str, str, str]]) -> bytes:
    """``(text, subtype, filename)`` parts as one MIME multipart message."""
    message = MIMEMultipart()
    for text, subtype, filename in parts:
        message.attach(_text_part(text, subtype, filename))
    return message.as_bytes(policy=email.policy.SMTP.clone(linesep="\n"))


def fit(data: bytes, sizes: dict[str, int], limit: int = MAX_USER_DATA) -> bytes:
    """``data`` as is, or gzipped when over ``limit``; ``UserDataTooLarge`` when it still does not fit."""
    if len(data) <= limit:
        return data
    packed = gzip.compress(data, compresslevel=9, mtime=0)
    if len(packed) <= limit:
        return packed
    detail = ", ".join(f"{name} {size} B" for name, size in sizes.items())
    raise UserDataTooLarge(f"user data is {len(data)} B ({len(packed)} B gzipped), over the {limit} B clouds "
                           f"accept: {detail}")


def build_user_data(ctx: VMContext, files: list[VMFile] | None = None, script: str | None = None) -> bytes:
    """The cloud-init user data of one VM (at most ``MAX_USER_DATA`` bytes)."""
    files = vm_files(ctx) if files is None else files
    script = start_script(ctx) if script is None else script
    config = cloud_config(files)
    data = multipart([(config, "cloud-config", "vmdirac-cloud-config"),
                      (script, "x-shellscript", "vmdirac-start.sh")])
    sizes = {f.path: len(f.content) for f in files} | {"start script": len(script.encode())}
    return fit(data, sizes)


# ---------------------------------------------------------------- reading it back

def parse_user_data(data: bytes) -> tuple[dict, list[str]]:
    """``(cloud_config, scripts)`` from user data as cloud-init reads it: gzipped or not, MIME
    multipart or a single ``#cloud-config`` / ``#!`` document. Several cloud-configs are merged
    (their ``write_files`` concatenated)."""
    configs: list[dict] = []
    scripts: list[str] = []
    for ctype, payload in _parts(data):
        _add_part(ctype, payload, configs, scripts)
    merged: dict = {}
    for config in configs:
        for key, value in config.items():
            if isinstance(value, list) and isinstance(merged.get(key), list):
                merged[key] = merged[key] + value
            else:
                merged[key] = value
    return merged, scripts


def _parts(data: bytes) -> list[tuple[str | None, bytes]]:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    head = data.lstrip()[:200].lower()
    if not (head.startswith(b"content-type:") or head.startswith(b"mime-version:")):
        return [(None, data)]
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    out = []
    for part in message.walk():
        if part.is_multipart():
            continue
        out.append((part.get_content_type(), part.get_payload(decode=True) or b""))
    return out


def _add_part(ctype: str | None, payload: bytes, configs: list[dict], scripts: list[str]) -> None:
    if ctype in GZIP_TYPES or payload[:2] == b"\x1f\x8b":
        payload, ctype = gzip.decompress(payload), None
    text = payload.decode("utf-8")
    if ctype == "text/cloud-config" or (ctype in (None, "text/plain") and text.startswith("#cloud-config")):
        try:
            config = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigurationError(f"user data: the cloud-config part is not YAML: {e}") from e
        if not isinstance(config, dict):
            raise ConfigurationError("user data: the cloud-config part is not a mapping")
        configs.append(config)
    elif ctype == "text/x-shellscript" or (ctype in (None, "text/plain") and text.startswith("#!")):
        scripts.append(text)
    # Other part types (boothooks, include files) are not ours; cloud-init would handle them.


def file_content(entry: dict) -> bytes:
    """The bytes of one ``write_files`` entry (plain, ``b64``, ``gzip``/``gz+b64``)."""
    content = entry.get("content", "")
    raw = content.encode() if isinstance(content, str) else bytes(content)
    encoding = str(entry.get("encoding", "")).lower()
    if encoding in ("b64", "base64"):
        return base64.b64decode(raw)
    if encoding in ("gz+b64", "gzip+base64", "gz+base64", "gzip+b64"):
        return gzip.decompress(base64.b64decode(raw))
    if encoding in ("gz", "gzip"):
        return gzip.decompress(raw)
    return raw
