"""WebDB: the web portal's own tables, its sessions and one-time login tokens.

Both are bearer secrets, so only their SHA-256 is stored: a copy of the table logs nobody in.
Everything lives in the DB (not in a process's memory) so that several portal processes over
one MySQL agree, and a login token is claimed by one guarded UPDATE, so it works once even when
two processes see it at the same moment.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from sqlalchemy import Column, Index, Integer, MetaData, String, Table, and_, delete, insert, select, update
from sqlalchemy.engine import Connection

from vmdirac.core.db import BaseDB, UTCDateTime, transaction, utcnow

metadata = MetaData()

web_sessions = Table(
    "WebSessions", metadata,
    Column("SessionHash", String(64), primary_key=True),   # sha256 of the cookie's session id
    Column("DN", String(255), nullable=False),
    Column("UserGroup", String(64), nullable=False),
    Column("Method", String(16), nullable=False),          # "link" or "certificate"
    Column("Created", UTCDateTime, nullable=False),
    Column("Expires", UTCDateTime, nullable=False),
    Index("WebSessions_Expires", "Expires"),
)

web_login_tokens = Table(
    "WebLoginTokens", metadata,
    Column("TokenHash", String(64), primary_key=True),      # sha256 of the token in the link
    Column("DN", String(255), nullable=False),
    Column("UserGroup", String(64), nullable=False),
    Column("Created", UTCDateTime, nullable=False),
    Column("Expires", UTCDateTime, nullable=False),
    Column("Used", Integer, nullable=False, default=0),
    Index("WebLoginTokens_Expires", "Expires"),
)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class WebSession:
    dn: str
    group: str
    method: str
    expires: dt.datetime


class WebDB(BaseDB):
    metadata = metadata

    # ------------------------------------------------------------ login tokens

    @transaction
    def add_login_token(self, conn: Connection, token: str, dn: str, group: str, lifetime: dt.timedelta) -> None:
        now = utcnow()
        conn.execute(insert(web_login_tokens).values(TokenHash=digest(token), DN=dn, UserGroup=group,
                                                     Created=now, Expires=now + lifetime, Used=0))

    @transaction
    def claim_login_token(self, conn: Connection, token: str) -> tuple[str, str] | None:
        """``(DN, group)`` of an unused, unexpired token, marking it used; else None (used,
        expired or unknown alike). The UPDATE's row count is the claim."""
        t, token_hash = web_login_tokens.c, digest(token)
        where = and_(t.TokenHash == token_hash, t.Used == 0, t.Expires > utcnow())
        if conn.execute(update(web_login_tokens).where(where).values(Used=1)).rowcount != 1:
            return None
        row = conn.execute(select(t.DN, t.UserGroup).where(t.TokenHash == token_hash)).one()
        return row.DN, row.UserGroup

    # ------------------------------------------------------------ sessions

    @transaction
    def add_session(self, conn: Connection, session_id: str, dn: str, group: str, method: str,
                    lifetime: dt.timedelta) -> dt.datetime:
        now = utcnow()
        expires = now + lifetime
        conn.execute(insert(web_sessions).values(SessionHash=digest(session_id), DN=dn, UserGroup=group,
                                                 Method=method, Created=now, Expires=expires))
        return expires

    @transaction(write=False)
    def session(self, conn: Connection, session_id: str) -> WebSession | None:
        s = web_sessions.c
        row = conn.execute(select(s.DN, s.UserGroup, s.Method, s.Expires)
                           .where(and_(s.SessionHash == digest(session_id), s.Expires > utcnow()))).first()
        return None if row is None else WebSession(row.DN, row.UserGroup, row.Method, row.Expires)

    @transaction
    def set_group(self, conn: Connection, session_id: str, group: str) -> bool:
        s = web_sessions.c
        return conn.execute(update(web_sessions).where(s.SessionHash == digest(session_id))
                            .values(UserGroup=group)).rowcount == 1

    @transaction
    def expire_session(self, conn: Connection, session_id: str, at: dt.datetime | None = None) -> None:
        """End a session now (logout), or make it end at ``at``."""
        s = web_sessions.c
        if at is None:
            conn.execute(delete(web_sessions).where(s.SessionHash == digest(session_id)))
        else:
            conn.execute(update(web_sessions).where(s.SessionHash == digest(session_id)).values(Expires=at))

    @transaction
    def purge(self, conn: Connection, before: dt.datetime | None = None) -> int:
        """Forget sessions and tokens that ended before ``before`` (default now)."""
        before = before or utcnow()
        n = conn.execute(delete(web_sessions).where(web_sessions.c.Expires < before)).rowcount
        n += conn.execute(delete(web_login_tokens).where(web_login_tokens.c.Expires < before)).rowcount
        return n
