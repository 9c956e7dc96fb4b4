"""Where each service and agent lives: ``System/Name`` -> ``module:Class``.

A configuration section may name another class with ``Module:`` (extensions do, as in DIRAC).
"""

SERVICES: dict[str, str] = {
    "Configuration/Server": "vmdirac.services.configuration:ConfigurationService",
    "WorkloadManagement/JobManager": "vmdirac.services.job_manager:JobManagerService",
    "WorkloadManagement/JobMonitoring": "vmdirac.services.job_monitoring:JobMonitoringService",
    "WorkloadManagement/JobStateUpdate": "vmdirac.services.job_state_update:JobStateUpdateService",
    "WorkloadManagement/Matcher": "vmdirac.services.matcher:MatcherService",
    "WorkloadManagement/SandboxStore": "vmdirac.services.sandbox_store:SandboxStoreService",
    "WorkloadManagement/VirtualMachineManager":
        "vmdirac.services.virtual_machine_manager:VirtualMachineManagerService",
    "Accounting/DataStore": "vmdirac.services.data_store:DataStoreService",
    "Framework/ProxyManager": "vmdirac.services.proxy_manager:ProxyManagerService",
}

AGENTS: dict[str, str] = {
    "WorkloadManagement/StalledJobAgent": "vmdirac.agents.stalled_job_agent:StalledJobAgent",
    "WorkloadManagement/SandboxCleaningAgent": "vmdirac.agents.sandbox_cleaning_agent:SandboxCleaningAgent",
    "WorkloadManagement/VirtualMachineScheduler": "vmdirac.agents.vm_scheduler:VirtualMachineScheduler",
    "WorkloadManagement/VirtualMachineReconciler": "vmdirac.agents.vm_reconciler:VirtualMachineReconciler",
}
