"""What the dirac-wms-job-* commands share: job ids from arguments and files, per-job results,
tables, and a progress bar that only large transfers on a terminal get."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from vmdirac.cli.common import parser
from vmdirac.core.clientconfig import ClientSession
from vmdirac.core.exceptions import IllegalTransition, InvalidArgument, NotAuthorized, NotFound
from vmdirac.wms.sandbox_client import Progress, progress_bar

MAX_RANGE = 10000          # ids one range may stand for: 1-1000000 is a typo, not a request
LARGE_TRANSFER = 1 << 20   # bytes from which a transfer shows a progress bar
# What one job may answer without the others being affected: reported per job, not fatal.
PER_JOB_ERRORS = (NotAuthorized, NotFound, IllegalTransition, InvalidArgument)


def job_parser(prog: str, description: str, example: str, ids: bool = True) -> argparse.ArgumentParser:
    """``common.parser`` with, when ``ids``, the JobID arguments and DIRAC's ``-f FILE``."""
    p = parser(prog, description, example)
    if ids:
        p.add_argument("jobs", nargs="*", metavar="JobID",
                       help="job ids: 12, ranges 10-20, or lists 12,14")
        p.add_argument("-f", "--File", dest="id_file", type=Path, default=None, metavar="FILE",
                       help="also the job ids in this file, one per line (as dirac-wms-job-submit -f writes)")
    return p


def parse_job_ids(values: Iterable[str], where: str = "") -> list[int]:
    """Job ids from ``12``, ``10-20`` and ``12,14``, in order, without repeats."""
    out: list[int] = []
    for value in values:
        for item in (v.strip() for v in value.split(",")):
            if not item:
                continue
            first, dash, last = item.partition("-")
            if dash and first.isdigit() and last.isdigit():
                low, high = int(first), int(last)
                if low == 0 or high < low:
                    raise InvalidArgument(f"{where}{item!r} is not a range of job ids (low-high)")
                if high - low + 1 > MAX_RANGE:
                    raise InvalidArgument(f"{where}{item!r} stands for more than {MAX_RANGE} jobs")
                out.extend(range(low, high + 1))
            elif item.isdigit() and int(item) > 0:
                out.append(int(item))
            else:
                raise InvalidArgument(f"{where}{item!r} is not a job id")
    return list(dict.fromkeys(out))


def read_id_file(path: Path) -> list[int]:
    """Ids one per line (ranges allowed); blank lines and ``#`` comments are skipped."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise InvalidArgument(f"cannot read {path}: {e.strerror or e}") from e
    out: list[int] = []
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if text:
            out.extend(parse_job_ids([text], f"{path} line {n}: "))
    return out


def job_ids(args: argparse.Namespace) -> list[int]:
    """Every id the command line names (arguments, then the file); at least one."""
    ids = parse_job_ids(args.jobs)
    if args.id_file is not None:
        ids = list(dict.fromkeys(ids + read_id_file(args.id_file)))
    if not ids:
        raise InvalidArgument("no job id given")
    return ids


# ---------------------------------------------------------------- results

def job_error(job_id: int, reason: str) -> int:
    """Print one job's failure on stderr (naming the job once); returns 1 for the exit code."""
    text = reason if reason.startswith(f"job {job_id} ") else f"job {job_id}: {reason}"
    print(f"ERROR: {text}", file=sys.stderr)
    return 1


def not_visible(job_id: int) -> int:
    """What the services answer for a job that is not there or not the caller's, alike."""
    return job_error(job_id, f"job {job_id} does not exist or is not yours")


def job_action(argv: list[str] | None, prog: str, description: str, method: str, done: str) -> int:
    """A bulk JobManager action on the jobs named by the arguments (``killJob``: ``Killed``),
    one result line per job, as dirac-wms-job-kill, -delete and -reschedule do."""
    example = (f"$ {prog} 12 13\n  {done} job 12\n"
               "  ERROR: job 13 does not exist or is not yours")
    ids = job_ids(job_parser(prog, description, example).parse_args(argv))
    manager = ClientSession.open().client("WorkloadManagement/JobManager")
    return report_bulk(getattr(manager, method)(ids), ids, done)


def report_bulk(result: dict, ids: Sequence[int], done: str) -> int:
    """Print DIRAC's ``{"Successful": [...], "Failed": {id: reason}}`` per id, in the order
    given (``Killed job 12``); 1 if any id failed."""
    ok = {int(j) for j in result.get("Successful", [])}
    failed = {int(k): v for k, v in result.get("Failed", {}).items()}
    code = 0
    for job_id in ids:
        if job_id in failed:
            code = job_error(job_id, failed[job_id])
        elif job_id in ok:
            print(f"{done} job {job_id}")
        else:
            code = job_error(job_id, "no answer from the server about this job")
    return code


# ---------------------------------------------------------------- output

def show(value: Any) -> str:
    """A value as the portal shows it: UTC times without zone or fraction, None as nothing."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc)
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Left-aligned columns, two spaces apart, a header line first."""
    cells = [[show(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def transfer_bar() -> Progress | None:
    """A progress callback that draws a bar (on stdout, only when it is a terminal) for
    transfers of at least ``LARGE_TRANSFER`` bytes; small ones stay quiet."""
    bar = progress_bar(sys.stdout)
    if bar is None:
        return None

    def progress(done: int, total: int) -> None:
        if total >= LARGE_TRANSFER:
            bar(done, total)

    return progress
