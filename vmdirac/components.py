"""Where each service and agent lives: ``System/Name`` -> ``module:Class``.

A configuration section may name another class with ``Module:`` (extensions do, as in DIRAC).
"""

SERVICES: dict[str, str] = {
    "Configuration/Server": "vmdirac.services.configuration:ConfigurationService",
}

AGENTS: dict[str, str] = {}
