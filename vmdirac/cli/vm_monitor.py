"""dirac-vm-monitor: the VM Monitor, run inside a VM by its contextualization.

It declares the VM running, starts ``dirac-pilot`` as its child, heartbeats, and halts the VM
under its stop policy (see ``vmdirac.agents.vm_monitor``). SIGTERM ends the monitor without
halting the VM (the VM is shutting down anyway).
"""

from __future__ import annotations

import signal
import sys

from vmdirac.agents.vm_monitor import VirtualMachineMonitor, load_vm_config
from vmdirac.cli.common import command, parser
from vmdirac.core.logs import setup_logging

EXAMPLE = """dirac-vm-monitor --config /etc/vmdirac/vmdirac-vm.yaml
  (the file cloud-init or SSH contextualization writes; on the local cloud every absolute path in
  it is read under $VMDIRAC_VM_ROOT)"""


@command
def main(argv: list[str] | None = None) -> int:
    p = parser("dirac-vm-monitor", "Run the VM Monitor: report this VM's state and halt it when it is done.",
               EXAMPLE)
    p.add_argument("--config", required=True, metavar="FILE", help="the VM configuration (vmdirac-vm.yaml)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-file", metavar="FILE", help="default: standard error")
    args = p.parse_args(argv)
    config = load_vm_config(args.config)
    setup_logging(args.log_level, args.log_file, component=f"vm-monitor {config.instance_name}")
    monitor = VirtualMachineMonitor(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: monitor.stop())
    return monitor.run()


if __name__ == "__main__":
    sys.exit(main())
