"""WorkloadManagement/SandboxStore: input and output sandboxes of jobs, as tar archives on disk.

Transfers are streamed on routes of their own (a sandbox may be megabytes, and the CLI shows a
progress bar):
- ``PUT  /WorkloadManagement/SandboxStore/upload?checksum=<sha256>&size=<bytes>&name=<file>``
  answers ``{"OK": true, "Value": "SB:<SE>|<path>"}``. Refused early (413) over the size limit;
  the data is hashed as it arrives, checked against ``checksum`` and ``size``, and must be a tar
  archive with no absolute path, ``..``, link or device in it; only then is it moved into place.
  The same content uploaded again by the same owner and group gets the same id.
- ``GET  /WorkloadManagement/SandboxStore/download?sb=<id>`` streams the file to its owner, an
  Operator or JobAdministrator of its VO, or a pilot.
The RPC methods link sandboxes to jobs; the JobManager uses ``SandboxMetadataDB`` directly.
Files live in ``<BasePath>/<group>/<owner>/<sha256[:2]>/<sha256>.tar[.gz|.bz2|.xz]``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable

import tornado.iostream
import tornado.web

from vmdirac.core import jencode
from vmdirac.core.exceptions import (
    BadRequest, Conflict, InternalError, InvalidArgument, NotAuthorized, NotFound, QuotaExceeded,
    RequestTooLarge, VMDiracError,
)
from vmdirac.core.export import AUTHENTICATED, Caller, Service, authorize, export
from vmdirac.core.server import BaseHandler, envelope_error
from vmdirac.db.sandbox_metadata_db import (
    SANDBOX_TYPES, SandboxInfo, SandboxMetadataDB, by_type, job_entity,
)
from vmdirac.db.job_db import JobDB
from vmdirac.db.sandbox_files import (
    SAFE_NAME, MiB, Incoming, SandboxFiles, SandboxStoreOptions, store_options,
)
from vmdirac.logic.job_access import is_job_admin, may_access, runs_job
from vmdirac.wms.job_status import ACTIVE
from vmdirac.wms.sandbox_client import check_tarball, compression_suffix

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
JOB_ADMINISTRATOR = "JobAdministrator"
GENERIC_PILOT = "GenericPilot"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


# ---------------------------------------------------------------- who may do what

def may_download(caller: Caller, info: SandboxInfo, runs: Callable[[SandboxInfo], bool] | None = None) -> bool:
    """The owner, an Operator/JobAdministrator of the sandbox's VO, or the pilot running a job
    whose input it is (``runs`` answers that)."""
    if not (caller.is_host and not is_job_admin(caller)) and may_access(caller, {"Owner": info.owner, "VO": info.vo}):
        return True
    return caller.has(GENERIC_PILOT) and runs is not None and runs(info)


def uploader(caller: Caller) -> tuple[str, str, str]:
    """``(owner, group, VO)`` of what ``caller`` uploads: a registered user in a group."""
    authorize(caller, frozenset([AUTHENTICATED]), "the SandboxStore upload")
    if caller.is_host:
        raise NotAuthorized(f"{caller} cannot upload sandboxes: use a user proxy")
    if not SAFE_NAME.match(caller.username) or not SAFE_NAME.match(caller.group):
        raise NotAuthorized(f"{caller}: user and group names must match {SAFE_NAME.pattern} to own sandboxes")
    return caller.username, caller.group, caller.vo


def http_status(err: VMDiracError) -> int:
    if err.http_status != 200:
        return err.http_status
    for cls, status in ((NotFound, 404), (InvalidArgument, 400), (Conflict, 409), (QuotaExceeded, 413)):
        if isinstance(err, cls):
            return status
    return 500


# ---------------------------------------------------------------- the service

class SandboxStoreService(Service):
    system = "WorkloadManagement"
    name = "SandboxStore"

    def initialize(self) -> None:
        self.options()  # bad options fail the start, not the first upload
        self.db = SandboxMetadataDB(self.context.engine)
        self.db.create_tables()
        # Access to a job's sandboxes follows the job (its owner, the pilot that matched it).
        self.jobdb = JobDB(self.context.engine)
        self.jobdb.create_tables()

    def options(self) -> SandboxStoreOptions:
        return store_options(self.context.config.current)

    def files(self, opts: SandboxStoreOptions | None = None) -> SandboxFiles:
        return SandboxFiles.configured(opts or self.options(), self.context.paths.root)

    def handlers(self) -> list[tuple]:
        base = f"/{self.system}/{self.name}"
        return [(f"{base}/upload", UploadHandler, {"service": self}),
                (f"{base}/download", DownloadHandler, {"service": self})]

    # ------------------------------------------------------------ transfers (run in the pool)

    def store_upload(self, caller: Caller, files: SandboxFiles, incoming: Incoming, checksum: str,
                     size: int, opts: SandboxStoreOptions) -> SandboxInfo:
        """Check a completely received upload and record it; its ``SandboxInfo``."""
        owner, group, vo = uploader(caller)
        incoming.close()
        if incoming.size != size:
            raise BadRequest(f"received {incoming.size} bytes but size={size} was announced")
        if incoming.sha256 != checksum:
            raise BadRequest(f"checksum mismatch: the data received has sha256 {incoming.sha256}, "
                             f"not {checksum}; nothing was stored")
        try:
            check_tarball(incoming.path, int(opts.MaxUnpackedSizeMiB * MiB))
        except InvalidArgument as e:
            raise BadRequest(f"{e.message}; nothing was stored") from e
        pfn = files.pfn_for(group, owner, checksum, compression_suffix(incoming.path))
        return self.db.register(owner, group, vo, opts.LocalSE, pfn, size, checksum,
                                place=lambda: files.place(incoming, pfn))

    def open_download(self, caller: Caller, sb_id: str) -> tuple[SandboxInfo, BinaryIO]:
        authorize(caller, frozenset([AUTHENTICATED]), "the SandboxStore download")
        info = self.db.get(sb_id)
        if not may_download(caller, info, lambda i: self._pilot_runs_job_of(caller, i)):
            raise NotAuthorized(f"{caller} may not download sandbox {sb_id}", sb_id=sb_id)
        fh = self.files().open(info)
        self.db.touch(info.row_id)
        return info, fh

    # ------------------------------------------------------------ RPC

    @export(properties=[JOB_ADMINISTRATOR])
    def assignSandboxesToJob(self, caller: Caller, jobId: int, sbList: list[str | list[str]],
                             ownerName: str = "", ownerGroup: str = "") -> int:
        """Link sandboxes to job ``jobId``: each item an id (an input sandbox) or ``[id, type]``
        as DIRAC sends them; they must be ``ownerName``'s in ``ownerGroup`` (default: the
        caller's). Returns the number of new links."""
        owner, group = ownerName or caller.username, ownerGroup or caller.group
        found = self.context.config.current.registry.groups.get(group)
        if found is None:
            raise InvalidArgument(f"no group {group!r} in the Registry")
        if not caller.is_host and caller.vo and found.vo != caller.vo:
            raise NotAuthorized(f"{caller} administers VO {caller.vo}, not {found.vo}")
        kinds: dict[str, list[str]] = {}
        for item in sbList:
            if isinstance(item, str):
                sb_id, kind = item, "Input"
            elif len(item) == 2 and item[1] in SANDBOX_TYPES:
                sb_id, kind = item
            else:
                raise InvalidArgument(f"{item!r}: expected [sandbox id, one of {', '.join(SANDBOX_TYPES)}]")
            kinds.setdefault(kind, []).append(sb_id)
        return self.db.run(lambda conn: sum(
            self.db.assign_to_job(ids, jobId, kind, owner, group, conn=conn) for kind, ids in kinds.items()))

    @export()
    def getSandboxesAssignedToEntity(self, caller: Caller, entityId: str) -> list:
        """``[[id, type], ...]`` of ``entityId`` (``Job:<id>``), as DIRAC answers."""
        links = self._readable_links(caller, entityId)
        return [[info.sb_id, kind] for info, kind in links]

    @export()
    def getSandboxesForJob(self, caller: Caller, jobId: int) -> dict:
        """``{"Input": [ids], "Output": [ids]}`` of job ``jobId``, for whoever may see the job
        (its owner, an administrator of its VO, the pilot that matched it)."""
        job = self.jobdb.attributes([jobId], ["Owner", "VO", "MatchedBy"]).get(jobId)
        if job is None or not (may_access(caller, job) or (caller.has(GENERIC_PILOT) and runs_job(caller, job))):
            raise NotAuthorized(f"job {jobId} does not exist or is not yours", job_id=jobId)
        return by_type(self.db.get_sandboxes_assigned_to_entity(job_entity(jobId)))

    @export(properties=[JOB_ADMINISTRATOR])
    def unassignJobs(self, caller: Caller, jobIds: list[int]) -> int:
        """Drop the links of these jobs (they were deleted); the number of links dropped."""
        vo = None if caller.is_host or not caller.vo else caller.vo
        return self.db.unassign_jobs(jobIds, vo)

    @export(properties=[GENERIC_PILOT, "NormalUser"])
    def storeOutputSandbox(self, caller: Caller, jobID: int, tarball: bytes) -> str:
        """For the pilot running job ``jobID`` (the identity that matched it, as JobStateUpdate
        checks): store ``tarball`` as the job's Output sandbox, owned by the job's owner and
        group, and link it, in one transaction. Its sandbox id. (Pilots on host credentials
        cannot use the upload route, which takes users' sandboxes only.)"""
        job = self.jobdb.attributes([jobID], ["Status", "MatchedBy", "Owner", "OwnerGroup",
                                                              "VO"]).get(jobID)
        if job is None or not runs_job(caller, job) or job["Status"] not in ACTIVE:
            raise NotAuthorized(f"job {jobID} is not run by this pilot", job_id=jobID)
        opts = self.options()
        if len(tarball) > opts.max_bytes:
            raise RequestTooLarge(f"an output sandbox of {len(tarball)} bytes is over the "
                                  f"{opts.MaxSandboxSizeMiB:g} MiB limit (MaxSandboxSizeMiB)")
        files = self.files(opts)
        incoming = files.incoming()
        try:
            incoming.write(tarball)
            incoming.close()
            check_tarball(incoming.path, int(opts.MaxUnpackedSizeMiB * MiB))
            owner, group = job["Owner"], job["OwnerGroup"]
            pfn = files.pfn_for(group, owner, incoming.sha256, compression_suffix(incoming.path))

            def store(conn) -> str:
                info = self.db.register(owner, group, job["VO"], opts.LocalSE, pfn, len(tarball), incoming.sha256,
                                        place=lambda: files.place(incoming, pfn), conn=conn)
                self.db.assign_to_job([info.sb_id], jobID, "Output", owner, group, conn=conn)
                return info.sb_id

            sb_id = self.db.run(store)
        finally:
            incoming.discard()
        log.info("output sandbox %s of job %d stored for %s (%d bytes)", sb_id, jobID, caller, len(tarball))
        return sb_id

    def _pilot_runs_job_of(self, caller: Caller, info: SandboxInfo) -> bool:
        """Whether ``caller`` matched a job, still running, that has this input sandbox."""
        job_ids = self.db.job_ids_of(info.row_id, "Input")
        jobs = self.jobdb.attributes(job_ids, ["MatchedBy", "Status"]) if job_ids else {}
        return any(runs_job(caller, j) and j["Status"] in ACTIVE for j in jobs.values())

    def _readable_links(self, caller: Caller, entity_id: str) -> list[tuple[SandboxInfo, str]]:
        links = self.db.get_sandboxes_assigned_to_entity(entity_id)
        for info, _ in links:
            if not may_download(caller, info, lambda i: self._pilot_runs_job_of(caller, i)):
                raise NotAuthorized(f"{caller} may not see the sandboxes of {entity_id}", entity=entity_id)
        return links


# ---------------------------------------------------------------- HTTP routes

class _TransferHandler(BaseHandler):
    """What both transfer routes share: counting in-flight work for a graceful stop, errors as
    the envelope with a status, one log line per transfer."""

    def initialize(self, app_state: Any, service: SandboxStoreService) -> None:  # type: ignore[override]
        super().initialize(app_state)
        self.service = service
        self._counted = False
        self._closed = False
        self._start = time.perf_counter()
        self.who: Caller | None = None

    def _begin(self) -> None:
        self._counted = True
        self.state.in_flight += 1
        self.state.idle.clear()

    def _end(self) -> None:
        if self._counted:
            self._counted = False
            self.state.in_flight -= 1
            if self.state.in_flight == 0:
                self.state.idle.set()

    def on_finish(self) -> None:
        self._end()

    def on_connection_close(self) -> None:
        self._closed = True
        super().on_connection_close()  # fails the body future of a streamed request
        self._end()

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return asyncio.get_running_loop().run_in_executor(self.state.executor, fn, *args)

    def _fail(self, err: VMDiracError, what: str) -> None:
        self._note(what, f"{type(err).__name__}: {err.message}")
        if not self._finished and not self._closed:
            self.reply(http_status(err), envelope_error(err))

    def _internal(self, what: str) -> InternalError:
        error_id = uuid.uuid4().hex[:12]
        log.exception("%s by %s failed (error id %s)", what, self.who or "unauthenticated", error_id)
        return InternalError(f"internal error in {what} (error id {error_id}); the server log has the details")

    def _note(self, what: str, outcome: str) -> None:
        log.info("%s by %s from %s: %s in %.1f ms", what, self.who or "unauthenticated",
                 self.request.remote_ip, outcome, (time.perf_counter() - self._start) * 1000)


@tornado.web.stream_request_body
class UploadHandler(_TransferHandler):
    SUPPORTED_METHODS = ("PUT",)
    WHAT = "SandboxStore upload"

    async def prepare(self) -> None:
        self._begin()
        self._incoming: Incoming | None = None
        try:
            # DIRAC's extraCredentials travel in the query here (the body is the tarball), so the
            # web portal (a TrustedHost) can upload for the user it acts for.
            extra = self.get_query_argument("extraCredentials", None)
            try:
                self.who = self.caller(jencode.loads(extra) if extra else None)
            except ValueError as e:
                raise BadRequest("extraCredentials is not valid JSON") from e
            uploader(self.who)
            self._checksum = self.get_query_argument("checksum", "").lower()
            if not _SHA256.match(self._checksum):
                raise BadRequest("checksum must be the sha256 of the tarball, in hex")
            size = self.get_query_argument("size", "")
            if not size.isdigit():
                raise BadRequest("size must be the number of bytes of the tarball")
            self._size = int(size)
            self._opts = self.service.options()
            length = self.request.headers.get("Content-Length")
            limit = self._opts.max_bytes
            if self._size > limit or (length is not None and length.isdigit() and int(length) > limit):
                raise RequestTooLarge(f"a sandbox of {max(self._size, int(length or 0))} bytes is over the "
                                      f"{self._opts.MaxSandboxSizeMiB:g} MiB limit (MaxSandboxSizeMiB)")
            if length is not None and length != size:
                raise BadRequest(f"Content-Length {length} differs from size={size}")
            self._files = self.service.files(self._opts)
            self._incoming = await self._run(self._files.incoming)
        except VMDiracError as err:
            self.set_header("Connection", "close")  # the body will not be read
            self._fail(err, self.WHAT)
        except Exception:
            self.set_header("Connection", "close")
            self._fail(self._internal(self.WHAT), self.WHAT)

    async def data_received(self, chunk: bytes) -> None:
        incoming = self._incoming
        if self._finished or incoming is None:
            return
        if incoming.size + len(chunk) > self._size:
            self._abort(BadRequest(f"more than the announced {self._size} bytes were sent"))
            return
        try:
            await self._run(incoming.write, chunk)
        except Exception:
            self._abort(self._internal(self.WHAT))

    def _abort(self, err: VMDiracError) -> None:
        if self._incoming is not None:
            self._incoming.discard()
            self._incoming = None
        self.set_header("Connection", "close")
        self._fail(err, self.WHAT)

    def on_connection_close(self) -> None:
        if self._incoming is not None:
            self._incoming.discard()   # the client went away mid-upload
            self._incoming = None
        super().on_connection_close()

    async def put(self) -> None:
        if self._finished or self._incoming is None:
            return
        incoming, self._incoming = self._incoming, None
        failure: VMDiracError | None = None
        try:
            info = await self._run(self.service.store_upload, self.who, self._files, incoming,
                                   self._checksum, self._size, self._opts)
        except VMDiracError as err:
            failure = err
        except Exception:
            failure = self._internal(self.WHAT)
        await self._run(incoming.discard)  # before answering: a refused upload leaves nothing
        if failure is not None:
            return self._fail(failure, self.WHAT)
        self._note(self.WHAT, f"{info.sb_id} ({info.size} bytes, "
                              f"name {self.get_query_argument('name', '')[:100]!r})")
        self.reply(200, {"OK": True, "Value": info.sb_id})


class DownloadHandler(_TransferHandler):
    SUPPORTED_METHODS = ("GET",)
    WHAT = "SandboxStore download"

    async def get(self) -> None:
        self._begin()
        try:
            self.who = self.caller()
            sb_id = self.get_query_argument("sb", "")
            if not sb_id:
                raise BadRequest("name the sandbox: GET .../download?sb=SB:<SE>|<path>")
            info, fh = await self._run(self.service.open_download, self.who, sb_id)
        except VMDiracError as err:
            return self._fail(err, self.WHAT)
        except Exception:
            return self._fail(self._internal(self.WHAT), self.WHAT)
        try:
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Content-Length", str(info.size))
            self.set_header("Content-Disposition", f'attachment; filename="{Path(info.pfn).name}"')
            self.set_header("X-Sandbox-Checksum", info.checksum)
            while chunk := await self._run(fh.read, CHUNK):
                self.write(chunk)
                await self.flush()
            self.finish()
            self._note(self.WHAT, f"{info.sb_id} ({info.size} bytes)")
        except tornado.iostream.StreamClosedError:
            self._note(self.WHAT, f"{info.sb_id}: the client went away")
        except Exception:
            self._internal(self.WHAT)  # headers are out: all we can do is log and close
            self.request.connection.close()  # type: ignore[union-attr]
        finally:
            fh.close()
