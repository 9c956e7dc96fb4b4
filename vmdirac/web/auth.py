"""Who is using the portal: sessions, one-time login links, client certificates, CSRF tokens.

- A session id is 256 random bits (``secrets``), sent only in a cookie that is HttpOnly, Secure
  and SameSite=Strict with an expiry; the DB keeps its SHA-256 (``WebDB``), never the id.
- A login link carries a one-time token (256 random bits, stored hashed, minutes to live) that
  ``dirac-web-login`` obtains by presenting the user's proxy; following it claims the token (one
  guarded UPDATE: a replayed link is refused) and makes a session for that DN and group.
- A browser presenting a client certificate (or proxy) our CA signed is that user; pages make it
  a session too, so that it has a CSRF token like everyone else.
- The CSRF token is HMAC-SHA256 keyed by the session id: bound to the session, derivable only by
  whoever holds the cookie (which scripts cannot read), and needing no server secret to keep.
  Every state-changing request must carry it (header ``X-CSRF-Token`` or form field ``_csrf``),
  compared with ``hmac.compare_digest``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from vmdirac.core.config import Registry
from vmdirac.core.exceptions import NotAuthenticated
from vmdirac.db.web_db import WebDB, WebSession

COOKIE = "vmdirac_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "_csrf"
_CSRF_CONTEXT = b"vmdirac-portal-csrf-v1"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def csrf_token(session_id: str) -> str:
    return hmac.new(session_id.encode(), _CSRF_CONTEXT, hashlib.sha256).hexdigest()


def csrf_ok(session_id: str | None, presented: str | None) -> bool:
    if not session_id or not presented:
        return False
    return hmac.compare_digest(csrf_token(session_id).encode(), presented.encode())


@dataclass(frozen=True)
class WebUser:
    """The person behind a request, as the Registry knows them now."""

    dn: str
    username: str
    group: str
    groups: tuple[str, ...]
    properties: frozenset[str]
    session_id: str | None = None      # None: a certificate request that has no session (yet)
    method: str = "certificate"

    @property
    def csrf(self) -> str:
        return csrf_token(self.session_id) if self.session_id else ""

    def has(self, *props: str) -> bool:
        return any(p in self.properties for p in props)


def web_user(registry: Registry, dn: str, group: str, session_id: str | None = None,
             method: str = "certificate") -> WebUser:
    """``NotAuthenticated`` unless ``dn`` is a registered user and ``group`` one of theirs (the
    default group when ``group`` is empty); checked on every request, so a user removed from
    the Registry is out at once."""
    user = registry.users_by_dn.get(dn)
    if user is None:
        raise NotAuthenticated(f"{dn} is not a registered user")
    group = group or registry.default_group_of(user)
    if not group or group not in user.groups or group not in registry.groups:
        raise NotAuthenticated(f"{user.name} is not a member of group {group or '(none)'}")
    return WebUser(dn, user.name, group, tuple(user.groups), registry.groups[group].properties, session_id, method)


class Sessions:
    """Login tokens and sessions in ``WebDB`` (blocking: call from an executor)."""

    def __init__(self, db: WebDB, session_hours: float, login_minutes: float) -> None:
        self.db = db
        self.session_lifetime = dt.timedelta(hours=session_hours)
        self.login_lifetime = dt.timedelta(minutes=login_minutes)

    def issue_login_token(self, dn: str, group: str) -> str:
        token = new_secret()
        self.db.add_login_token(token, dn, group, self.login_lifetime)
        return token

    def login_with_token(self, token: str) -> tuple[str, WebSession] | None:
        """A new session for an unused, unexpired token, or None (it cannot be used again)."""
        if not token or len(token) > 128:
            return None
        claimed = self.db.claim_login_token(token)
        if claimed is None:
            return None
        return self.start(*claimed, method="link")

    def start(self, dn: str, group: str, method: str) -> tuple[str, WebSession]:
        session_id = new_secret()
        expires = self.db.add_session(session_id, dn, group, method, self.session_lifetime)
        return session_id, WebSession(dn, group, method, expires)

    def find(self, session_id: str | None) -> WebSession | None:
        if not session_id or len(session_id) > 128:
            return None
        return self.db.session(session_id)

    def end(self, session_id: str) -> None:
        self.db.expire_session(session_id)

    def switch_group(self, session_id: str, group: str) -> None:
        self.db.set_group(session_id, group)
