"""dirac-configuration-dump and dirac-configuration-commit: read and change the served tree."""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

from vmdirac.cli.common import command, parser
from vmdirac.core.clientconfig import ClientSession
from vmdirac.core.config import parse_yaml


@command
def dump_main(argv: list[str] | None = None) -> int:
    p = parser("dirac-configuration-dump", "Print the configuration tree the server serves (YAML).",
               "dirac-configuration-dump > cs.yaml")
    p.add_argument("--version-only", action="store_true", help="print the version number only")
    args = p.parse_args(argv)
    session = ClientSession.open()
    server = session.client("Configuration/Server", urls=list(session.settings.ConfigurationServer))
    answer = server.getCompressedData()
    if args.version_only:
        print(answer["version"])
        return 0
    sys.stdout.write(f"# version {answer['version']}\n")
    sys.stdout.write(zlib.decompress(answer["data"]).decode())
    return 0


@command
def commit_main(argv: list[str] | None = None) -> int:
    p = parser("dirac-configuration-commit",
               "Commit a YAML file as the next configuration version (needs CSAdministrator).",
               "dirac-configuration-commit cs.yaml --based-on 7 -m 'add site LCG.CERN.ch'")
    p.add_argument("file", type=Path, help="the whole new tree, as YAML")
    p.add_argument("--based-on", type=int, required=True,
                   help="the version your file was edited from (refused if the server has a newer one)")
    p.add_argument("-m", "--message", default="", help="commit comment")
    args = p.parse_args(argv)
    text = args.file.read_text()
    parse_yaml(text, str(args.file))  # a local syntax error is reported before any call
    session = ClientSession.open()
    server = session.client("Configuration/Server", urls=list(session.settings.ConfigurationServer))
    version = server.commitNewData(text, args.based_on, args.message)
    print(f"committed as version {version}")
    return 0
