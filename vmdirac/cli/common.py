"""What every command shares: argument parsing with an example, errors as one line, exit codes."""

from __future__ import annotations

import argparse
import functools
import getpass
import os
import sys
from typing import Callable

from vmdirac.core.exceptions import InvalidArgument, VMDiracError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # A usage mistake is an error like any other: one line, exit 1 (argparse: usage, exit 2).
        raise InvalidArgument(f"{message} (see {self.prog} --help)")


def parser(prog: str, description: str, example: str) -> argparse.ArgumentParser:
    return _Parser(prog=prog, description=description, epilog=f"example:\n  {example}",
                   formatter_class=argparse.RawDescriptionHelpFormatter)


def command(fn: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Run a command's main: exit 0, or 1 with one line on stderr for any error of ours."""

    @functools.wraps(fn)
    def main(argv: list[str] | None = None) -> int:
        prog = os.path.basename(sys.argv[0]) or fn.__module__.rsplit(".", 1)[-1]
        try:
            return fn(argv) or 0
        except VMDiracError as e:
            print(f"ERROR: {e.message}", file=sys.stderr)
            return 1
        except BrokenPipeError:
            # The reader went away (e.g. `| head`): nothing more to say, and say nothing.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except KeyboardInterrupt:
            print("ERROR: interrupted", file=sys.stderr)
            return 1
        except OSError as e:
            print(f"ERROR: {prog}: {e.strerror or e}{': ' + str(e.filename) if e.filename else ''}",
                  file=sys.stderr)
            return 1

    return main


def read_password(prompt: str, from_stdin: bool) -> bytes:
    if from_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n").encode()
    if not sys.stdin.isatty():
        raise VMDiracError("no terminal to ask for the password: use --pwstdin")
    return getpass.getpass(prompt).encode()
