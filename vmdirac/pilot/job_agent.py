"""The JobAgent: the pilot's loop. It offers its free slots to the Matcher and runs every job it
gets in a JobWrapper thread, until it is told to drain or has asked in vain often enough.

One request asks for a job of at most ``free`` cores (``NumberOfProcessors`` = free slots), so a
multi-core job can take several slots at once; after a match the agent asks again at once while
slots remain free. While nothing matches, each request is a long poll (``MatchWait`` seconds:
the Matcher answers as soon as a fitting job is submitted), asked again at once when it ends
empty; with ``MatchWait = 0``, or a Matcher without long polls, the pilot asks every
``PollingInterval`` seconds instead (jittered by +-25 %, so pilots booted together do not ask
in step). A job that ends frees its slots and wakes the loop. ``CPUTime`` in the request is the time the
pilot has left (``TimeLimit``), so the Matcher never gives a job that could not finish; the
JDL's ``CPUTime`` is checked again on arrival.

Draining is the one way to stop: ``drain()`` (what the VM Monitor calls), the stop file
(``StopFile``), SIGTERM in ``dirac-pilot``, ``MaxEmptyMatches`` consecutive empty answers, or the
time limit. A draining pilot asks for nothing more, lets its running jobs end, then ``run()``
returns. ``abort()`` also kills the payloads (their jobs end ``Failed``).

The agent keeps ``<WorkDir>/.pilot-status.json`` up to date (slots, running job ids, draining,
ended) whenever that changes: the VM Monitor counts the VM's running jobs from it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path

from vmdirac.core.exceptions import (
    BadRequest, InvalidJDL, NotAuthenticated, NotAuthorized, SecurityError, VMDiracError,
)
from vmdirac.pilot.config import Connection, PilotOptions
from vmdirac.pilot.job_wrapper import JobLost, JobWrapper, MatchedJob, Outcome, Reporter
from vmdirac.wms.job_description import JobDescription
from vmdirac.wms.job_status import JobStatus as S

log = logging.getLogger(__name__)

NOT_ENOUGH_TIME = "Pilot has not enough time left for the job"
STATUS_FILE = ".pilot-status.json"     # hidden: the work dir holds job directories
MAX_BACKOFF = 60.0


def resource_description(opts: PilotOptions, free: int, time_left: float | None) -> dict:
    """What one request offers, with DIRAC's keys (see ``wms.matching.ResourceDescription``)."""
    desc: dict = {"Site": opts.Site, "Endpoint": opts.Endpoint, "Image": opts.Image,
                  "Platform": opts.Platform, "Tag": list(opts.Tags), "RequiredTag": list(opts.RequiredTags),
                  "NumberOfProcessors": free, "MaxRAM": opts.MaxRAM, "InstanceID": opts.InstanceID,
                  "PilotReference": opts.PilotReference}
    if time_left is not None:
        desc["CPUTime"] = max(0, int(time_left))
    return {k: v for k, v in desc.items() if v not in ("", [], None)}


def cores_for(desc: JobDescription, free: int) -> int:
    """Slots a job takes: ``NumberOfProcessors`` (or its Max), capped by what is free; a job
    giving only ``MinNumberOfProcessors`` takes every free slot, as in DIRAC."""
    attrs = desc.attributes
    if desc.max_number_of_processors is not None:
        wanted = desc.max_number_of_processors
    elif "MinNumberOfProcessors" in attrs:
        wanted = free
    else:
        wanted = desc.number_of_processors
    return max(1, min(wanted, free))


class JobAgent:
    def __init__(self, opts: PilotOptions, connection: Connection, wrapper: type[JobWrapper] = JobWrapper) -> None:
        self.opts = opts
        self.connection = connection
        self.wrapper = wrapper
        self.matcher = connection.client("WorkloadManagement/Matcher", connect_timeout=10, timeout=120)
        self._lock = threading.Lock()
        self._status_lock = threading.Lock()
        self._wake = threading.Event()
        self._draining = threading.Event()
        self._abort = threading.Event()
        self.drain_reason = ""
        self.used = 0
        self.running: dict[int, int] = {}           # job id -> cores
        self.ended: Counter[str] = Counter()       # final statuses of the jobs run
        self._threads: list[threading.Thread] = []
        self.started = time.monotonic()
        self.empty_matches = 0
        self.exit_code = 0
        self.long_poll = opts.MatchWait > 0

    # ------------------------------------------------------------ what others call

    def drain(self, reason: str = "asked to drain") -> None:
        """Take no new job; let the running ones end; then ``run()`` returns. Thread-safe."""
        with self._lock:
            first = not self._draining.is_set()
            if first:
                self.drain_reason = reason
                self._draining.set()
        if first:
            log.info("draining: %s; %d job(s) running", reason, len(self.running))
            self._write_status()
        self._wake.set()

    def abort(self, reason: str = "aborted") -> None:
        """Drain and kill the running payloads now."""
        log.warning("aborting: %s; killing %d payload(s)", reason, len(self.running))
        self._abort.set()
        self.drain(reason)

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    @property
    def free_slots(self) -> int:
        return self.opts.Slots - self.used

    def time_left(self) -> float | None:
        if not self.opts.TimeLimit:
            return None
        return self.opts.TimeLimit - (time.monotonic() - self.started)

    # ------------------------------------------------------------ the loop

    def run(self) -> int:
        opts = self.opts
        Path(opts.WorkDir).mkdir(parents=True, exist_ok=True)
        self._write_status()
        asking = (f"long polls of {opts.MatchWait:g} s" if opts.MatchWait
                  else f"polling every {opts.PollingInterval:g} s")
        log.info("pilot %s started: %d slot(s), site %r, platform %s, tags %s, %d MB, time limit %s, %s, "
                 "work dir %s", opts.PilotReference, opts.Slots, opts.Site, opts.Platform, ",".join(opts.Tags) or "-",
                 opts.MaxRAM, f"{opts.TimeLimit:.0f} s" if opts.TimeLimit else "none", asking, opts.WorkDir)
        failures = 0
        idle_logged = False
        while True:
            self._wake.clear()
            self._check_stop_conditions()
            if self.draining:
                if not self.running:
                    break
                self._wake.wait(1.0)
                continue
            free = self.free_slots
            if free <= 0:
                self._wake.wait(1.0)       # a job's end wakes us; the stop file is checked each second
                continue
            time_left = self.time_left()
            wait = opts.MatchWait if self.long_poll else 0.0
            asked = time.monotonic()
            try:
                job = self._request(resource_description(opts, free, time_left), wait)
                failures = 0
            except (NotAuthenticated, NotAuthorized, SecurityError) as e:
                log.error("the Matcher refuses this pilot's credential: %s", e)
                self.exit_code = 1
                self.drain("credential refused")
                continue
            except VMDiracError as e:
                failures += 1
                pause = min(MAX_BACKOFF, opts.PollingInterval * 2 ** failures)
                log.warning("requestJob failed (%s); again in %.1f s", e, pause)
                self._wake.wait(pause)
                continue
            if job is None:
                self.empty_matches += 1
                if not idle_logged:
                    log.info("no job matched for %d free slot(s); asking %s", free,
                             f"with {wait:g} s long polls" if wait else f"every {opts.PollingInterval:g} s")
                    idle_logged = True
                if opts.MaxEmptyMatches and self.empty_matches >= opts.MaxEmptyMatches:
                    self.drain(f"{self.empty_matches} consecutive empty matches")
                    continue
                # A long poll has waited on the server already; a plain request waits here.
                pause = opts.PollingInterval * random.uniform(0.75, 1.25) - (time.monotonic() - asked)
                if pause > 0:
                    self._wake.wait(pause)
                continue
            self.empty_matches = 0
            idle_logged = False
            self._start(job, free, time_left)
        for thread in self._threads:
            thread.join()
        self._write_status(ended=True)
        log.info("pilot %s stopped (%s): %d job(s) run%s", opts.PilotReference, self.drain_reason,
                 sum(self.ended.values()), "".join(f", {k}: {v}" for k, v in sorted(self.ended.items())))
        return self.exit_code

    def _request(self, description: dict, wait: float) -> dict | None:
        if not wait:
            return self.matcher.requestJob(description)
        try:
            return self.matcher.requestJob(description, wait)
        except BadRequest as e:
            if "argument" not in e.message:
                raise
            # A Matcher without the waitSeconds extension (DIRAC's own, or an older one).
            log.warning("the Matcher does not long-poll (%s); polling every %g s instead", e,
                        self.opts.PollingInterval)
            self.long_poll = False
            return self.matcher.requestJob(description)

    def _check_stop_conditions(self) -> None:
        if self.draining:
            return
        if self.opts.StopFile and Path(self.opts.StopFile).exists():
            self.drain(f"stop file {self.opts.StopFile} exists")
        left = self.time_left()
        if left is not None and left < 1:
            self.drain("time limit reached")

    def _start(self, job: dict, free: int, time_left: float | None) -> None:
        job_id = int(job["JobID"])
        try:
            desc = JobDescription.from_jdl(job["JDL"])
            cores, cpu_time = cores_for(desc, free), desc.cpu_time
        except InvalidJDL:
            cores, cpu_time = 1, 0                  # the wrapper reports it Failed
        matched = MatchedJob(job_id, job["JDL"], str(job.get("Owner", "")), cores,
                             wall_limit=max(0.0, time_left) if time_left is not None else 0.0)
        if time_left is not None and cpu_time > time_left:
            # The Matcher had CPUTime = time left; a job that does not fit means it did not look.
            log.error("job %d needs CPUTime %d s but this pilot has %.0f s left: refusing it", job_id, cpu_time,
                      time_left)
            threading.Thread(target=self._refuse, args=(job_id,), daemon=True).start()
            return
        with self._lock:
            self.used += cores
            self.running[job_id] = cores
        log.info("job %d matched (owner %s, %d core(s), CPUTime %d s); %d of %d slot(s) in use", job_id,
                 matched.owner or "?", cores, cpu_time, self.used, self.opts.Slots)
        self._write_status()
        wrapper = self.wrapper(matched, self.opts, self.connection, self._abort)
        thread = threading.Thread(target=self._run_job, args=(wrapper, job_id), name=f"job-{job_id}")
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _run_job(self, wrapper: JobWrapper, job_id: int) -> None:
        try:
            outcome = wrapper.run()
        except Exception as e:  # JobWrapper.run catches everything; this is the last resort
            log.exception("job %d: wrapper crashed", job_id)
            outcome = Outcome(job_id, "Unknown", str(e))
        with self._lock:
            self.ended[outcome.status] += 1
            self.used -= self.running.pop(job_id, 0)
        self._write_status()
        self._wake.set()

    def _write_status(self, ended: bool = False) -> None:
        """``<WorkDir>/.pilot-status.json``, replaced atomically: what the VM Monitor reads."""
        with self._lock:
            status = {"PilotReference": self.opts.PilotReference, "Pid": os.getpid(), "Slots": self.opts.Slots,
                      "UsedSlots": self.used, "RunningJobs": sorted(self.running), "Draining": self.draining,
                      "Ended": ended, "JobsRun": sum(self.ended.values()), "Time": time.time()}
        path = Path(self.opts.WorkDir) / STATUS_FILE
        with self._status_lock:
            try:
                tmp = path.with_name(STATUS_FILE + ".tmp")
                tmp.write_text(json.dumps(status) + "\n")
                os.replace(tmp, path)
            except OSError as e:
                log.warning("cannot write %s: %s", path, e)

    def _refuse(self, job_id: int) -> None:
        try:
            Reporter(self.connection, job_id).final(S.FAILED, NOT_ENOUGH_TIME)
        except (VMDiracError, JobLost) as e:
            log.warning("job %d: could not report it refused: %s", job_id, e)
