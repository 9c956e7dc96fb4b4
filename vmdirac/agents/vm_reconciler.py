"""VirtualMachineReconciler: makes the DB and the clouds agree.

- no heartbeat for ``StallingInterval`` -> Stalled, and terminated at its endpoint;
- VMs at an endpoint with our deployment tag that the DB does not know, or has Halted -> terminated
  (orphans: a scheduler that died between the boot and its record, a VM that outlived its halt);
- instances whose VM the endpoint no longer has -> Halted ("gone at the endpoint");
- instances past their pod's ``MaxLifetime`` -> asked to stop (drain, then halt).
Nothing running a job is killed here, except a Stalled VM (it has not been heard of for the
whole stalling interval: its jobs are the StalledJobAgent's).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from vmdirac.agents.vm_scheduler import state_dir
from vmdirac.core.agent import Agent, AgentOptions
from vmdirac.core.db import utcnow
from vmdirac.core.exceptions import VMDiracError
from vmdirac.db.virtual_machine_db import VirtualMachineDB
from vmdirac.drivers.base import Driver, DriverError, make_driver
from vmdirac.vm import config as vmconfig
from vmdirac.vm.reconcile import Known, decide


@dataclass(frozen=True)
class ReconcilerOptions(AgentOptions):
    PollingTime: float = 300.0
    StallingInterval: float = 40 * 60.0   # VMDIRAC's 40 minutes
    BootGrace: float = 40 * 60.0          # a Submitted VM has this long to send its first heartbeat


