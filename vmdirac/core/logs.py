"""Logging set-up shared by every command: one greppable line per event, UTC times."""

from __future__ import annotations

import logging
import logging.handlers
import time
from pathlib import Path


class _UTCFormatter(logging.Formatter):
    converter = time.gmtime


def setup_logging(level: str = "INFO", path: str | Path | None = None, component: str = "") -> None:
    fmt = "%(asctime)s UTC %(levelname)s " + (f"{component} " if component else "") + "%(name)s: %(message)s"
    handler: logging.Handler
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.WatchedFileHandler(path)
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(_UTCFormatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    try:
        root.setLevel(level.upper())
    except ValueError:
        root.setLevel(logging.INFO)
        logging.getLogger(__name__).warning("unknown log level %r, using INFO", level)
    # Tornado logs every failed handshake at WARNING; refused credentials are routine for us.
    logging.getLogger("tornado.general").setLevel(logging.ERROR)
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
