"""One error hierarchy for the whole project.

Code inside raises these; the RPC layer turns them into DIRAC's ``{"OK": False, "Message",
"Errno"}`` envelope at the edge (and the client turns the envelope back into the same class).
Each class carries the errno that travels on the wire and the HTTP status it answers with.
"""

from __future__ import annotations

import errno as _errno


class VMDiracError(Exception):
    """Base of every error we raise on purpose."""

    errno: int = _errno.EIO
    http_status: int = 200

    def __init__(self, message: str, **ids: object) -> None:
        super().__init__(message)
        self.message = message
        self.ids = ids

    def __str__(self) -> str:
        return self.message


class BadRequest(VMDiracError):
    """The request itself is malformed: not JSON, wrong argument count or types."""

    errno = _errno.EINVAL
    http_status = 400


class RequestTooLarge(BadRequest):
    errno = _errno.EFBIG
    http_status = 413


class UnknownService(VMDiracError):
    errno = _errno.ENOENT
    http_status = 404


class UnknownMethod(VMDiracError):
    errno = _errno.ENOSYS
    http_status = 501


class NotAuthenticated(VMDiracError):
    """No credential, or one we do not trust (expired, unknown CA, forged chain)."""

    errno = _errno.EACCES
    http_status = 401


class NotAuthorized(VMDiracError):
    """A trusted caller that lacks the property or ownership the action needs."""

    errno = _errno.EPERM
    http_status = 403


class InvalidArgument(VMDiracError):
    """Arguments of the right type whose values make no sense (an unknown status, a bad id)."""

    errno = _errno.EINVAL


class InvalidJDL(InvalidArgument):
    """A job description that cannot be parsed or breaks a rule; the message names the line."""


class QuotaExceeded(VMDiracError):
    """A limit was reached (sandbox size, parametric job cap, a cloud's quota)."""

    errno = _errno.EDQUOT


class NotFound(VMDiracError):
    errno = _errno.ENOENT


class Conflict(VMDiracError):
    """The action is based on a state that has changed meanwhile (e.g. an old config version)."""

    errno = _errno.EALREADY


class IllegalTransition(VMDiracError):
    errno = _errno.EBADRQC


class ConfigurationError(VMDiracError):
    errno = _errno.EINVAL


class SecurityError(VMDiracError):
    """A credential file is missing, unreadable or not what it claims to be."""

    errno = _errno.EACCES


class DBError(VMDiracError):
    """The database failed in a way retrying did not mend."""

    errno = _errno.EIO


class ServiceUnavailable(VMDiracError):
    """No URL of a service answered (client side)."""

    errno = _errno.ECONNREFUSED


class InternalError(VMDiracError):
    """An unexpected failure; the caller sees only an id to quote, the log has the traceback."""

    errno = _errno.EIO
    http_status = 500


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def error_class(name: str) -> type[VMDiracError]:
    """The class called ``name`` (as sent in an envelope's ``ErrorClass``), else the base."""
    for cls in _all_subclasses(VMDiracError):
        if cls.__name__ == name:
            return cls
    return VMDiracError
