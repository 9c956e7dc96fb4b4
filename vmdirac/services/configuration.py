"""Configuration/Server: serves the configuration tree by version and takes new versions.

Reading is open to every caller with a certificate of our CA (the tree holds no secrets: the
``Local`` section never leaves its host); committing needs ``CSAdministrator`` and is refused
when based on a version that is no longer the newest. Every version is kept.
"""

from __future__ import annotations

import zlib

from vmdirac.core.config import LOCAL_SECTION, Registry, parse_yaml
from vmdirac.core.exceptions import ConfigurationError, InvalidArgument
from vmdirac.core.export import ALL, Caller, Service, export
from vmdirac.db.config_db import ConfigDB

CS_ADMINISTRATOR = "CSAdministrator"


def validate_tree(text: str) -> dict:
    """A tree that parses and whose Registry is consistent; ``InvalidArgument`` otherwise."""
    try:
        tree = parse_yaml(text, "the new configuration")
        if LOCAL_SECTION in tree:
            raise ConfigurationError(f"the served configuration may not hold a {LOCAL_SECTION} section")
        Registry.from_tree(tree)
    except ConfigurationError as e:
        raise InvalidArgument(e.message) from e
    return tree


class ConfigurationService(Service):
    system = "Configuration"
    name = "Server"

    def initialize(self) -> None:
        self.db = ConfigDB(self.context.engine)
        self.db.create_tables()

    @export(properties=[ALL])
    def getVersion(self, caller: Caller) -> int:
        return self.db.current_version()

    @export(properties=[ALL])
    def getCompressedData(self, caller: Caller) -> dict:
        return self.getCompressedDataIfNewer(caller, 0)

    @export(properties=[ALL])
    def getCompressedDataIfNewer(self, caller: Caller, version: int) -> dict | None:
        found = self.db.newer_than(version)
        if found is None:
            return None
        newest, text = found
        return {"version": newest, "data": zlib.compress(text.encode())}

    @export(properties=[CS_ADMINISTRATOR])
    def commitNewData(self, caller: Caller, data: str, basedOn: int, comment: str = "") -> int:
        """Store the YAML ``data`` as the next version; refused if ``basedOn`` is not the newest."""
        validate_tree(data)
        version = self.db.commit(data, basedOn, caller.dn, comment)
        self.context.config.refresh(force=True)
        return version

    @export(properties=[CS_ADMINISTRATOR])
    def getCommitHistory(self, caller: Caller, limit: int = 100) -> list:
        if not 1 <= limit <= 10000:
            raise InvalidArgument("limit must be between 1 and 10000")
        return [v.to_wire() for v in self.db.history(limit)]

    @export(properties=[CS_ADMINISTRATOR])
    def getVersionContents(self, caller: Caller, version: int) -> str:
        return self.db.contents(version)

    @export(properties=[CS_ADMINISTRATOR])
    def rollbackToVersion(self, caller: Caller, version: int, comment: str = "") -> int:
        """Commit the contents of an earlier ``version`` as the newest one."""
        text = self.db.contents(version)
        newest = self.db.current_version()
        result = self.db.commit(text, newest, caller.dn, comment or f"rollback to version {version}")
        self.context.config.refresh(force=True)
        return result
