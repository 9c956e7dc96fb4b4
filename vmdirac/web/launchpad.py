"""The Launch Pad: a JDL from form fields (or typed in), input sandbox files, submit.

The uploaded files go through the same path as ``dirac-wms-job-submit``: one tarball uploaded to
the SandboxStore as the user (the host delegating), its ``SB:`` id in the JDL's InputSandbox.
"""

from __future__ import annotations

import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from vmdirac.core.exceptions import InvalidArgument, InvalidJDL
from vmdirac.web.backend import JOB_MANAGER
from vmdirac.web.base import PageHandler, PortalHandler
from vmdirac.wms import jdl as J
from vmdirac.wms.sandbox_client import make_tarball, sandbox_url, upload_sandbox

TEXT_FIELDS = ("Executable", "Arguments", "JobName", "JobGroup", "StdOutput", "StdError", "Site")
LIST_FIELDS = ("OutputSandbox", "Tags")
INT_FIELDS = ("CPUTime", "NumberOfProcessors")
MAX_FILES = 50
MAX_NAME = 255      # bytes, as file systems allow


def jdl_from_fields(form: dict[str, str]) -> dict[str, Any]:
    """JDL attributes from the form (empty fields left out; lists comma-separated)."""
    attrs: dict[str, Any] = {}
    for name in TEXT_FIELDS:
        if form.get(name, "").strip():
            attrs[name] = form[name].strip()
    for name in LIST_FIELDS:
        items = [i.strip() for i in form.get(name, "").split(",") if i.strip()]
        if items:
            attrs[name] = items
    for name in INT_FIELDS:
        value = form.get(name, "").strip()
        if value:
            if not (value.isascii() and value.isdigit() and len(value) <= 9):
                raise InvalidArgument(f"{name} must be a whole number (at most 9 digits)")
            attrs[name] = int(value)
    if "Executable" not in attrs:
        raise InvalidJDL("Executable is required")
    return attrs


def safe_name(name: str) -> str:
    """The browser's file name without any directory part; refused when nothing sensible is left."""
    base = PurePosixPath(name.replace("\\", "/")).name
    if (not base or base in (".", "..") or base.startswith(".") or len(base.encode()) > MAX_NAME
            or not base.isprintable()):
        raise InvalidArgument(f"{name[:60]!r} is not a usable file name")
    return base


class LaunchPadPage(PageHandler):
    template = "launchpad.html"
    title = "Launch Pad"


class SubmitHandler(PortalHandler):
    """``POST /api/submit`` (multipart): the JDL fields or ``JDL``, and files ``sandbox``."""

    async def post(self) -> None:
        form = {k: self.get_body_argument(k, "") for k in (*TEXT_FIELDS, *LIST_FIELDS, *INT_FIELDS, "JDL")}
        files = self.request.files.get("sandbox", [])
        if len(files) > MAX_FILES:
            raise InvalidArgument(f"at most {MAX_FILES} input sandbox files")
        if form["JDL"].strip():
            attrs = J.parse(form["JDL"])
        else:
            attrs = jdl_from_fields(form)
        names = [safe_name(f["filename"]) for f in files]
        if len(set(names)) != len(names):
            raise InvalidArgument("two input sandbox files have the same name")
        # InputSandbox entries naming local files must be among the uploaded ones.
        entries = attrs.get("InputSandbox", [])
        entries = entries if isinstance(entries, list) else [e.strip() for e in str(entries).split(",") if e.strip()]
        kept = [e for e in entries if e.startswith("SB:") or e.upper().startswith("LFN:")]
        missing = [e for e in entries if e not in kept and e not in names]
        if missing:
            raise InvalidArgument(f"InputSandbox names {', '.join(missing)}: attach those files")
        if files:
            sb_id = await self.run(self._upload, names, [f["body"] for f in files])
            attrs["InputSandbox"] = [*kept, sb_id]
        result = await self.rpc(JOB_MANAGER, "submitJob", J.dumps(attrs))
        ids = result if isinstance(result, list) else [result]
        self.reply({"ids": ids, "sandbox_files": names})

    def _upload(self, names: list[str], bodies: list[bytes]) -> str:
        # The files are the user's own inputs (not secrets): a private temporary directory,
        # removed at once, is how make_tarball and the upload read them.
        assert self.user is not None
        with tempfile.TemporaryDirectory(prefix="vmdirac-web-sb-") as tmp:
            base = Path(tmp)
            for name, body in zip(names, bodies):
                (base / name).write_bytes(body)
            tarball = make_tarball([Path(n) for n in names], base, base / "sandbox.tar.gz")
            creds = self.state.backend.credentials(self.user)
            return upload_sandbox(creds, sandbox_url(self.state.config), tarball)
