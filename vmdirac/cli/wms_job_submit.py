"""dirac-wms-job-submit: submit JDL files, uploading their local input sandbox files first.

Every file is read and checked (JDL syntax, input sandbox files present) before anything is
uploaded or submitted, so a typo submits nothing. Local InputSandbox entries (neither ``SB:`` nor
``LFN:``) are relative to the JDL file's directory; they travel as one tarball per JDL, whose
``SB:`` id replaces them in the JDL the server gets.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from vmdirac.cli.common import command
from vmdirac.cli.wms_common import job_parser, transfer_bar
from vmdirac.core.clientconfig import ClientSession
from vmdirac.core.exceptions import InvalidArgument, InvalidJDL, NotFound, VMDiracError
from vmdirac.wms import jdl as J
from vmdirac.wms.sandbox_client import make_tarball, sandbox_url, upload_sandbox


@dataclass
class JobFile:
    path: Path
    text: str
    attrs: dict
    kept: list[str]     # SB: and LFN: entries, passed on as they are
    local: list[str]    # files to upload, as the JDL names them


def is_local(entry: str) -> bool:
    return not entry.startswith("SB:") and not entry.upper().startswith("LFN:")


def sandbox_entries(attrs: dict) -> list[str]:
    """InputSandbox as DIRAC reads it: a list, or one string of comma-separated names."""
    value = attrs.get("InputSandbox", [])
    items = value if isinstance(value, list) else str(value).split(",")
    return list(dict.fromkeys(str(i).strip() for i in items if str(i).strip()))


def read_job(path: Path) -> JobFile:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from e
    try:
        attrs = J.parse(text)
    except InvalidJDL as e:
        raise InvalidJDL(f"{path}: {e.message}") from e
    entries = sandbox_entries(attrs)
    local = [e for e in entries if is_local(e)]
    for entry in local:
        if not (path.parent / entry).exists():
            raise NotFound(f"{path}: InputSandbox file {entry} not found (looked in {path.parent.absolute()})")
    return JobFile(path, text, attrs, [e for e in entries if not is_local(e)], local)


def with_sandbox(job: JobFile, session: ClientSession) -> str:
    """The JDL to submit: the local files uploaded as one sandbox whose id replaces them."""
    if not job.local:
        return job.text
    tarball = make_tarball([Path(e) for e in job.local], job.path.parent)
    try:
        sb_id = upload_sandbox(session.credentials, sandbox_url(session.config), tarball, transfer_bar())
    finally:
        tarball.unlink(missing_ok=True)
    return J.dumps({**job.attrs, "InputSandbox": [*job.kept, sb_id]})


@command
def main(argv: list[str] | None = None) -> int:
    p = job_parser("dirac-wms-job-submit", "Submit jobs described by JDL files; print their ids.",
                   "$ dirac-wms-job-submit job.jdl -f jobids.txt\n  JobID = 12", ids=False)
    p.add_argument("jdl", nargs="+", type=Path, metavar="FILE.jdl",
                   help="job description; its InputSandbox files are relative to its directory")
    p.add_argument("-f", "--File", dest="id_file", type=Path, default=None, metavar="FILE",
                   help="append the new job ids to this file, one per line")
    args = p.parse_args(argv)
    jobs = [read_job(path) for path in args.jdl]
    try:  # opened first: an id file we cannot write must not leave jobs nobody recorded
        id_file = open(args.id_file, "a") if args.id_file is not None else None
    except OSError as e:
        raise InvalidArgument(f"cannot write {args.id_file}: {e.strerror or e}") from e
    session = ClientSession.open()
    manager = session.client("WorkloadManagement/JobManager")
    code = 0
    try:
        for job in jobs:
            try:
                result = manager.submitJob(with_sandbox(job, session))
            except (VMDiracError, OSError) as e:
                why = e.message if isinstance(e, VMDiracError) else f"{e.strerror or e}: {e.filename}"
                print(f"ERROR: {job.path}: {why}", file=sys.stderr)
                code = 1
                continue
            print(f"JobID = {result}", flush=True)
            if id_file is not None:
                id_file.writelines(f"{i}\n" for i in (result if isinstance(result, list) else [result]))
                id_file.flush()
    finally:
        if id_file is not None:
            id_file.close()
    return code
