from setuptools import find_packages, setup

COMMANDS = {
    "vmdirac-server": "vmdirac.cli.server:main",
    "dirac-service": "vmdirac.cli.service:main",
    "dirac-agent": "vmdirac.cli.agent:main",
    "dirac-cert-init": "vmdirac.cli.cert_init:main",
    "dirac-proxy-init": "vmdirac.cli.proxy_init:main",
    "dirac-proxy-info": "vmdirac.cli.proxy_info:main",
    "dirac-cert-convert": "vmdirac.cli.cert_convert:main",
    "dirac-configuration-dump": "vmdirac.cli.configuration:dump_main",
    "dirac-configuration-commit": "vmdirac.cli.configuration:commit_main",
    "dirac-pilot": "vmdirac.cli.pilot:main",
    "dirac-vm-monitor": "vmdirac.cli.vm_monitor:main",
    "dirac-wms-job-submit": "vmdirac.cli.wms_job_submit:main",
    "dirac-wms-job-status": "vmdirac.cli.wms_job_status:main",
    "dirac-wms-job-logging-info": "vmdirac.cli.wms_job_logging_info:main",
    "dirac-wms-job-parameters": "vmdirac.cli.wms_job_parameters:main",
    "dirac-wms-job-get-output": "vmdirac.cli.wms_job_get_output:main",
    "dirac-wms-job-kill": "vmdirac.cli.wms_job_kill:main",
    "dirac-wms-job-reschedule": "vmdirac.cli.wms_job_reschedule:main",
    "dirac-wms-job-delete": "vmdirac.cli.wms_job_delete:main",
    "dirac-vm-instances": "vmdirac.cli.vm_instances:main",
    "dirac-vm-instance-history": "vmdirac.cli.vm_instance_history:main",
    "dirac-vm-instance-stop": "vmdirac.cli.vm_instance_stop:main",
    "dirac-vm-pods": "vmdirac.cli.vm_pods:main",
    "dirac-vm-endpoint-status": "vmdirac.cli.vm_endpoint_status:main",
    "dirac-accounting-report": "vmdirac.cli.accounting_report:main",
    "dirac-web-login": "vmdirac.cli.web_login:main",
}

setup(
    name="vmdirac",
    version="0.1.0",
    description="DIRAC workload management with the VMDIRAC cloud extension, rebuilt in Python",
    packages=find_packages(include=["vmdirac", "vmdirac.*"]),
    package_data={"vmdirac.web": ["templates/*.html", "static/*.js", "static/*.css"]},
    python_requires=">=3.11",
    install_requires=[
        "tornado>=6.3",
        "sqlalchemy>=2.0",
        "pymysql>=1.1",
        "cryptography>=42",
        "apache-libcloud>=3.8",
        "pyyaml>=6",
        # Accounting plots (Accounting/DataStore.getPlot, the portal's "Load vs Jobs") as PNG,
        # drawn server side with the Agg backend: no display, no browser charting library.
        "matplotlib>=3.8",
    ],
    # hypothesis: property tests of the JDL parser (inputs are many, as STYLE.md asks).
    # playwright: drives Debian's /usr/bin/chromium in the web portal's browser tests (never
    # `playwright install`: the tests launch the system browser and skip without it).
    # moto[server]: the EC2 emulator the ec2 driver is tested against (tests/clouds/moto_ec2.py).
    # mimic: Rackspace's keystone v2 + nova emulator the openstack driver's v2 path is tested
    # against (tests/clouds/mimic_nova.py), started as a real server (twistd).
    extras_require={"test": ["pytest>=8", "hypothesis>=6", "playwright>=1.40", "moto[server]>=5.0", "mimic>=2.2"]},
    entry_points={"console_scripts": [f"{name}={target}" for name, target in COMMANDS.items()]},
)
