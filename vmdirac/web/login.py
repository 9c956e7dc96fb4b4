"""Logging in and out: the one-time link ``dirac-web-login`` asks for, its landing, group switch."""

from __future__ import annotations

import logging

from vmdirac.core.auth import identify
from vmdirac.core.exceptions import InvalidArgument, NotAuthenticated, NotAuthorized
from vmdirac.core.server import connection_chain
from vmdirac.web.auth import COOKIE, web_user
from vmdirac.web.base import PortalHandler, clear_session_cookie, set_session_cookie

log = logging.getLogger(__name__)


class LoginLinkHandler(PortalHandler):
    """``POST /api/login-link`` with the user's proxy as client certificate (no session, no
    cookie): a one-time link for the identity and group the proxy carries. Nothing here acts on
    a cookie, so there is nothing for a forged cross-site request to gain: it cannot read the link."""

    public = True

    async def post(self) -> None:
        registry = self.state.config.current.registry
        chain = connection_chain(self.request)
        try:
            if chain is None:
                raise NotAuthenticated("present your proxy (dirac-web-login does) to get a login link")
            caller = identify(chain, registry)
            if caller.is_host or caller.instance_id is not None:
                raise NotAuthenticated(f"{caller} is not a person: log in with a user proxy")
            user = web_user(registry, caller.dn, caller.group)
        except NotAuthenticated as e:
            return self.refuse(401, e.message)
        token = await self.run(self.state.sessions.issue_login_token, user.dn, user.group)
        minutes = self.state.sessions.login_lifetime.total_seconds() / 60
        log.info("portal: login link issued to %s@%s", user.username, user.group)
        self.reply({"url": f"https://{self.request.host}/login?token={token}", "user": user.username,
                    "group": user.group, "expires_minutes": minutes})


class LoginHandler(PortalHandler):
    """``GET /login?token=...``: claims the token (once) and starts the session."""

    public = True
    json_api = False

    async def get(self) -> None:
        token = self.get_query_argument("token", "")
        found = await self.run(self.state.sessions.login_with_token, token)
        if found is None:
            log.warning("portal: refused a login link from %s: used, expired or unknown", self.request.remote_ip)
            return self.login_page(403, "refused: this login link was already used or has expired; "
                                        "run dirac-web-login for a new one")
        session_id, session = found
        try:   # the Registry may have changed since the link was made
            user = web_user(self.state.config.current.registry, session.dn, session.group, session_id, "link")
        except NotAuthenticated as e:
            await self.run(self.state.sessions.end, session_id)
            log.warning("portal: refused a login link from %s: %s", self.request.remote_ip, e.message)
            return self.login_page(403, f"refused: {e.message}")
        previous = self.get_cookie(COOKIE)
        if previous:   # the browser forgets the old one now: so does the DB
            await self.run(self.state.sessions.end, previous)
        set_session_cookie(self, session_id, session.expires)
        log.info("portal: %s@%s logged in with a link", user.username, user.group)
        # A page, not a redirect: the next request starts from our own page, so the browser sends
        # the SameSite=Strict cookie even when the link was opened from another site or a mailer.
        self.render("logged_in.html", user=user, title="Logged in", page="login")


class LogoutHandler(PortalHandler):
    json_api = False

    async def post(self) -> None:
        assert self.user is not None
        if self.user.session_id:
            await self.run(self.state.sessions.end, self.user.session_id)
        clear_session_cookie(self)
        log.info("portal: %s logged out", self.user.username)
        self.redirect("/jobs", status=303)


class GroupHandler(PortalHandler):
    """``POST /api/group {"group": ...}``: act in another of the user's groups."""

    async def post(self) -> None:
        assert self.user is not None
        group = self.json_body().get("group")
        if not isinstance(group, str) or not group:
            raise InvalidArgument("group must be the name of one of your groups")
        if group not in self.user.groups:
            raise NotAuthorized(f"{self.user.username} is not a member of group {group}")
        user = web_user(self.state.config.current.registry, self.user.dn, group, self.user.session_id)
        if self.user.session_id:
            await self.run(self.state.sessions.switch_group, self.user.session_id, user.group)
        self.reply({"group": user.group, "properties": sorted(user.properties)})


class RootHandler(PortalHandler):
    public = True

    def get(self) -> None:
        self.redirect("/jobs")
