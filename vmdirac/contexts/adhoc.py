"""Ad-hoc images: the image brings its own workload (a service, a batch node of another system)
and only needs the VM Monitor, to declare itself, heartbeat and halt under the stop policy.

The same files as cloud-init's (credential, CA, VM configuration with ``StartPilot: false`` and
no pilot section) and the same start script, which starts only the monitor. With no pilot, the
monitor counts no job: an Elastic VM halts after ``HaltPeriod`` under ``MinWorkingLoad``, so the
image's own work must show as load; ``Never`` keeps it until the server or the provider stops it.
"""

from __future__ import annotations

from vmdirac.contexts import VMContext, VMFile, start_script, vm_files
from vmdirac.contexts.cloudinit import build_user_data


def adhoc_files(ctx: VMContext) -> list[VMFile]:
    return vm_files(ctx, start_pilot=False)


def build_adhoc_user_data(ctx: VMContext) -> bytes:
    """cloud-init user data that starts only the VM Monitor."""
    return build_user_data(ctx, adhoc_files(ctx), start_script(ctx))
