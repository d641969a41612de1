"""`LabAuthenticator`: NativeAuthenticator with the lab's rules.

NativeAuthenticator gives the workflow the lab wants - people sign up, an admin approves them
at /hub/authorize, they log in - with weak defaults and generic error messages. This subclass
adds:

- admin bootstrap: signing up under an admin name needs the one-time setup token
  (`bootstrap.py`), so whoever reaches the port first cannot claim the hub;
- sign-up checks with a specific message each: user names `useradd` would refuse or that are
  system accounts (`names.py`), and a real password policy (`passwords.py`), including
  passwords over bcrypt's 72 bytes (which crash bcrypt >= 5 with a 500 otherwise);
- passwords hashed and checked off the event loop (`hashing.py`), so sign-ups and logins
  never stall the hub for everyone;
- rate limits per client address (`throttle.py`, `client_address.py`): a burst of sign-ups,
  then one every few minutes; a burst of failed logins, then one every few seconds; and a
  lockout per name *and address*, so an outsider who fails as `admin` locks out only
  themself (a name failing from many addresses is slowed for unknown addresses only);
- Unix accounts (`users.py`): made when an admin approves a person, checked at each login
  (which also sets the account's password to the hub password, for sudo), and removed (home
  and UID kept) when the hub user is deleted.

Tested with JupyterHub 5.x and NativeAuthenticator 1.3.0 (its login fails on JupyterHub 6).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import Any

from jupyterhub import orm
from jupyterhub.utils import new_token
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.handlers import (
    TEMPLATE_DIR as NATIVE_TEMPLATES,
)
from nativeauthenticator.handlers import (
    AuthorizationAreaHandler,
    ChangePasswordAdminHandler,
    ChangePasswordHandler,
    DiscardHandler,
    LoginHandler,
    SignUpHandler,
    ToggleAuthorizationHandler,
    admin_users_scope,
)
from nativeauthenticator.orm import UserInfo
from tornado import web
from tornado.escape import url_escape
from tornado.httputil import url_concat
from traitlets import Bool, Integer, Unicode, default

from . import bootstrap, hashing, users
from .client_address import FORWARDED_FOR, client_address
from .names import name_problem
from .passwords import password_problem, too_long
from .throttle import TokenBuckets, address_key, minutes

TEMPLATES = os.path.join(os.path.dirname(__file__), "templates")
TEMPLATE_PATHS = [TEMPLATES, NATIVE_TEMPLATES]
"""For `c.JupyterHub.template_paths`: ours first (sign-up form), then NativeAuthenticator's."""


class LabAuthenticator(NativeAuthenticator):
    """Sign-up with admin approval, a bootstrap token for the first admin, Unix accounts."""

    minimum_password_length = Integer(
        10,
        config=True,
        help="""Minimum password length at sign-up and password change (NativeAuthenticator's
        default is 1). Passwords on a list of common passwords, or containing the user name,
        are refused too.""",
    )
    allowed_failed_logins = Integer(
        5,
        config=True,
        help="""Failed logins for one name from one client address after which that address
        may try that name once per `seconds_before_next_try`. Per address, so an outsider
        cannot lock a member out: their own address is locked, not the name. 0 disables
        it.""",
    )
    seconds_before_next_try = Integer(
        300,
        config=True,
        help="Seconds between tries of a name from an address after `allowed_failed_logins`.",
    )
    failed_logins_per_name = Integer(
        50,
        config=True,
        help="""Failed logins for one name, from all addresses together, after which the name
        may be tried once per `seconds_before_next_try` from addresses it has never logged
        in from (a guesser rotating addresses); from the addresses its owner logged in from
        it is not slowed. 0: no such limit.""",
    )
    failed_logins_per_address = Integer(
        30,
        config=True,
        help="""Failed logins from one client address (any names) before it may fail only
        once per `failed_login_refill_seconds`: a password-guessing flood is refused before
        any password is checked. 0: no limit.""",
    )
    failed_login_refill_seconds = Integer(
        20, config=True, help="Seconds per further failed login an address earns back."
    )
    signups_per_address = Integer(
        30,
        config=True,
        help="""Sign-ups one client address may make in a burst (a class signing up from one
        campus address fits); after it, one per `signup_refill_seconds`. Refused sign-ups
        (a taken name, a weak password) do not count. 0: no limit.""",
    )
    signup_refill_seconds = Integer(
        120, config=True, help="Seconds per further sign-up an address earns back."
    )
    max_pending_signups = Integer(
        200,
        config=True,
        help="""Sign-ups awaiting an admin's approval beyond which new ones are refused with a
        message (an admin approves or discards some at /hub/authorize). Bounds what a flood
        from many addresses can store. 0: no limit.""",
    )
    client_address_header = Unicode(
        FORWARDED_FOR,
        config=True,
        help="""The header that names a request's client address for the rate limits. With
        X-Forwarded-For, the entry the lab's own proxy appended (or the one
        `trusted_proxies` further left); with another header (X-Real-IP), its value, which a
        reverse proxy in front of the lab must set on every request.""",
    )
    trusted_proxies = Integer(
        0,
        config=True,
        help="""Reverse proxies of the lab's in front of the hub that append the client's
        address to X-Forwarded-For (0: clients connect to the hub's port directly). Set it
        only when the hub's port is reachable through those proxies alone: entries to
        their left are written by the client and could be forged.""",
    )
    manage_unix_accounts = Bool(
        True,
        config=True,
        help="""Create, update and remove the Unix accounts of lab members in the hub
        container (needs root). Off only to run this authenticator outside the lab image.""",
    )
    private_homes = Bool(
        False,
        config=True,
        help="""New homes are private (0700) instead of readable by the lab (0750).""",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        refill = max(1, self.seconds_before_next_try)
        self._failures_by_name_and_address = TokenBuckets(
            max(1, self.allowed_failed_logins), refill
        )
        self._failures_by_name = TokenBuckets(max(1, self.failed_logins_per_name), refill)
        self._failures_by_address = TokenBuckets(
            max(1, self.failed_logins_per_address), max(1, self.failed_login_refill_seconds)
        )
        self._signups_by_address = TokenBuckets(
            max(1, self.signups_per_address), max(1, self.signup_refill_seconds)
        )
        # name -> {address key: when it last logged in from there}
        self._known_addresses: dict[str, dict[str, float]] = {}
        if self.admin_setup_pending():
            token = bootstrap.ensure_token()
            names = " or ".join(sorted(self.admin_users)) or "(no admin_users configured!)"
            self.log.warning(
                "\n\n    No admin yet. Sign up as %s at /hub/signup with this setup token:"
                "\n\n        %s\n",
                names,
                token,
            )

    @default("allow_all")
    def _allow_all_default(self) -> bool:
        # Every user with a valid password *and* the admin's approval may log in: the approval
        # check is in NativeAuthenticator.authenticate(). JupyterHub 5 otherwise refuses
        # everyone but the admins.
        return True

    # -- policy --------------------------------------------------------------------------------

    def admin_setup_pending(self) -> bool:
        """True until an admin name has signed up (then the setup token is gone)."""
        return not any(self.user_exists(name) for name in self.admin_users)

    def signup_problem(
        self, username: str, password: str, confirmation: str, setup_token: str
    ) -> str | None:
        """Why this sign-up is refused, or None to let NativeAuthenticator create the user."""
        if message := name_problem(username):
            return message
        if self.user_exists(username):
            return f"The user name {username!r} is taken. Please choose another."
        if password != confirmation:
            return "The password and its confirmation differ. Please type them again."
        if message := password_problem(username, password, self.minimum_password_length):
            return message
        if username in self.admin_users and not bootstrap.check_token(setup_token):
            return (
                f"Signing up as {username!r} needs the setup token that `make up` printed "
                "(it is also in the hub's log: `make logs`)."
            )
        return None

    def validate_username(self, username: str) -> bool:
        return name_problem(username) is None and super().validate_username(username)

    def is_password_strong(self, password: str) -> bool:
        # Used by NativeAuthenticator's create_user() and change_password().
        return password_problem("", password, self.minimum_password_length) is None

    # -- rate limits ---------------------------------------------------------------------------

    def client_key(self, handler: web.RequestHandler) -> str:
        """Who a request counts against: its client address (IPv6: its /64)."""
        return address_key(
            client_address(handler.request, self.client_address_header, self.trusted_proxies)
        )

    def login_refusal(self, username: str, client: str) -> tuple[int, str] | None:
        """(HTTP status, message) when this login may not be tried now, else None. Takes
        nothing: only failures count."""
        if self.failed_logins_per_address and (wait := self._failures_by_address.wait_for(client)):
            return 429, (
                "Too many failed logins from your network address. Please wait "
                f"{minutes(wait)} and try again."
            )
        if not self.allowed_failed_logins:
            return None
        wait = self._failures_by_name_and_address.wait_for(f"{username}\0{client}")
        if not wait and self.failed_logins_per_name and client not in self._known(username):
            wait = self._failures_by_name.wait_for(username)
        if wait:
            return 403, (
                f"Too many failed logins for {username!r} from your network address. Please "
                f"wait {minutes(wait)} and try again."
            )
        return None

    def _known(self, username: str) -> dict[str, float]:
        return self._known_addresses.get(username, {})

    def _count_failure(self, username: str, client: str) -> None:
        self._failures_by_address.take(client)
        self._failures_by_name_and_address.take(f"{username}\0{client}")
        self._failures_by_name.take(username)

    def _count_success(self, username: str, client: str) -> None:
        self._failures_by_name_and_address.forgive(f"{username}\0{client}")
        known = self._known_addresses.setdefault(username, {})
        known[client] = time.time()
        if len(known) > 20:  # the most recent places a member logs in from
            del known[min(known, key=known.__getitem__)]

    def signup_refusal(self, client: str) -> str | None:
        """The message when a sign-up from `client` may not be stored now, else None; an
        allowed one is counted."""
        if self.max_pending_signups and self.get_unauthed_amount() >= self.max_pending_signups:
            return (
                "The lab has too many sign-ups waiting for an admin's approval to take more "
                "now. Please ask the lab's admin, or try again later."
            )
        if self.signups_per_address and (wait := self._signups_by_address.take(client)):
            return (
                "Too many sign-ups from your network address. Please wait "
                f"{minutes(wait)} and try again."
            )
        return None

    def is_blocked(self, username: str) -> bool:
        # NativeAuthenticator's per-name lockout is replaced by login_refusal (per address).
        return False

    def get_unauthed_amount(self) -> int:
        # NativeAuthenticator counts row by row with a query each; one query here.
        return self.db.query(UserInfo).filter(UserInfo.is_authorized.is_(False)).count()

    # -- accounts ------------------------------------------------------------------------------

    def create_user(self, username: str, password: str, **kwargs: Any) -> UserInfo | None:
        # NativeAuthenticator's, with the hash made beforehand off the event loop
        # (LabSignUpHandler) instead of on it.
        username = self.normalize_username(username)
        if (
            self.user_exists(username)
            or not self.validate_username(username)
            or not self.is_password_strong(password)
            or not self.enable_signup
        ):
            return None
        infos: dict[str, Any] = {"username": username, "password": hashing.hash_for(password)}
        infos.update(kwargs)
        pre_authorized = self.open_signup or username in self.get_authed_users()
        if pre_authorized:
            infos["is_authorized"] = True
        try:
            user = UserInfo(**infos)
        except AssertionError:  # an invalid email address
            return None
        if (
            self.allow_self_approval_for
            and not pre_authorized
            and re.match(self.allow_self_approval_for, user.email or "")
        ):
            self.send_approval_email(user.email, self.generate_approval_url(username))
            user.login_email_sent = True
        self.db.add(user)
        self.db.commit()
        if username in self.admin_users:
            bootstrap.consume_token()
            self.log.info("Admin %s signed up; the setup token is used up.", username)
        return user

    def change_password(self, username: str, new_password: str) -> bool | None:
        user = self.get_user(username)
        if user is None or not self.is_password_strong(new_password):
            return None
        user.password = hashing.hash_for(new_password)
        self.db.commit()
        return True

    async def authenticate(self, handler: web.RequestHandler, data: dict[str, str]) -> str | None:
        """NativeAuthenticator's check, with bcrypt in a thread and failures counted per
        client address. `handler.login_outcome` tells the login page why it failed."""
        username = self.normalize_username(data.get("username", ""))
        password = data.get("password", "")
        if too_long(password):
            return None  # bcrypt >= 5 would raise; LabLoginHandler shows why.
        client = self.client_key(handler)
        if self.login_refusal(username, client):
            return None
        info = self.get_user(username)
        # Read on the loop's thread: the ORM session is not thread-safe.
        stored = bytes(info.password) if info is not None and info.password else None
        valid = await hashing.check(password, stored)
        if valid and info is not None and info.has_2fa:
            valid = info.is_valid_token(data.get("2fa"))
        if not valid:
            self._count_failure(username, client)
            return None
        if info is None or not info.is_authorized:
            handler.login_outcome = "unapproved"  # type: ignore[attr-defined]
            return None
        self._count_success(username, client)
        if self.manage_unix_accounts:
            found = orm.User.find(self.db, username)
            admin = username in self.admin_users or bool(found and found.admin)
            await asyncio.to_thread(self._sync_account, username, password, admin)
        return username

    def _sync_account(self, username: str, password: str, admin: bool) -> None:
        users.ensure_account(username, admin=admin, private_home=self.private_homes)
        users.set_password_hash(username, password)

    def approved(self, username: str) -> None:
        """Called when an admin approves `username`: their account and home appear now."""
        if self.manage_unix_accounts:
            users.ensure_account(username, private_home=self.private_homes)

    def delete_user(self, user: Any) -> Any:
        result = super().delete_user(user)
        if self.manage_unix_accounts:
            # JupyterHub stopped their server and dropped their sessions; what they left
            # running in the hub (a `nohup` from a terminal) ends now too.
            users.end_processes(user.name)
            users.deactivate(user.name)
        return result

    def get_handlers(self, app: Any) -> list[tuple[str, type]]:
        ours = {
            LoginHandler: LabLoginHandler,
            SignUpHandler: LabSignUpHandler,
            AuthorizationAreaHandler: LabAuthorizationAreaHandler,
            ToggleAuthorizationHandler: LabToggleAuthorizationHandler,
            DiscardHandler: LabDiscardHandler,
            ChangePasswordHandler: LabChangePasswordHandler,
            ChangePasswordAdminHandler: LabChangePasswordAdminHandler,
        }
        return [(route, ours.get(handler, handler)) for route, handler in super().get_handlers(app)]


class LabPage:
    """What every page of the lab's handlers may show: the password rules in force."""

    authenticator: LabAuthenticator

    def render_template(self, name: str, sync: bool = False, **ns: Any) -> Any:
        ns.setdefault("minimum_password_length", self.authenticator.minimum_password_length)
        return super().render_template(name, sync=sync, **ns)  # type: ignore[misc]


class LabLoginHandler(LabPage, LoginHandler):
    """The login form, with specific messages for a locked name and an over-long password."""

    def _render(
        self, login_error: str | None = None, username: str | None = None, **kwargs: Any
    ) -> Any:
        # JupyterHub renders errors of the login POST (an expired form, say) through
        # _render(..., sync=True, status_code=...); NativeAuthenticator 1.3.0's _render takes
        # neither, which turns a "try again" into a 500.
        return self.render_template(
            "native-login.html",
            sync=kwargs.get("sync", False),
            next=url_escape(self.get_argument("next", default="")),
            username=username,
            login_error=login_error,
            custom_html=self.authenticator.custom_html,
            login_url=self.settings["login_url"],
            enable_signup=self.authenticator.enable_signup,
            two_factor_auth=self.authenticator.allow_2fa,
            authenticator_login_url=url_concat(
                self.authenticator.login_url(self.hub.base_url),
                {"next": self.get_argument("next", "")},
            ),
        )

    async def post(self) -> None:
        # NativeAuthenticator's, without its second bcrypt check on the event loop to find
        # out whether a failure was an unapproved account (authenticate() says so).
        authenticator: LabAuthenticator = self.authenticator
        username = authenticator.normalize_username(self.get_body_argument("username", ""))
        password = self.get_body_argument("password", "", strip=False)
        status, message = 400, too_long(password)
        if message is None:
            refusal = authenticator.login_refusal(username, authenticator.client_key(self))
            if refusal is not None:
                status, message = refusal
        if message is None:
            data = {arg: self.get_argument(arg, strip=False) for arg in self.request.arguments}
            user = await self.login_user(data)
            if user:
                self._jupyterhub_user = user
                self.redirect(self.get_next_url(user))
                return
            status, message = 403, "Invalid username or password."
            if getattr(self, "login_outcome", None) == "unapproved":
                message = f"User {username} has not been authorized by an administrator yet."
        self.set_status(status)
        self.finish(await self._render(login_error=message, username=username))


class LabSignUpHandler(LabPage, SignUpHandler):
    """The sign-up form: our checks first, each with its message; then NativeAuthenticator's."""

    def render_template(self, name: str, sync: bool = False, **ns: Any) -> Any:
        authenticator: LabAuthenticator = self.authenticator
        ns.setdefault("setup_token_required", authenticator.admin_setup_pending())
        ns.setdefault("admin_names", sorted(authenticator.admin_users))
        return super().render_template(name, sync=sync, **ns)

    def get_result_message(self, user: Any, *args: Any) -> tuple[str, str]:
        alert, message = super().get_result_message(user, *args)
        name = user.username if user is not None else ""
        if alert == "alert-info" and user is not None and not user.login_email_sent:
            message = (
                f"Thank you, {name}: your sign-up has reached the lab's admins. An admin must "
                "approve your account before you can log in; you can log in as soon as they "
                "have."
            )
        elif alert == "alert-success":
            message = f"{name} is signed up. Log in now; you can approve people at /hub/authorize."
        return alert, message

    async def post(self) -> None:
        authenticator: LabAuthenticator = self.authenticator
        if not authenticator.enable_signup:
            raise web.HTTPError(404)
        raw_name = self.get_body_argument("username", "", strip=False)
        username = authenticator.normalize_username(raw_name)
        problem = authenticator.signup_problem(
            username,
            self.get_body_argument("signup_password", "", strip=False),
            self.get_body_argument("signup_password_confirmation", "", strip=False),
            self.get_body_argument("setup_token", "", strip=True),
        )
        if problem is not None:
            self.set_status(400)
            self.finish(await self._refused(problem, raw_name))
            return
        if refusal := authenticator.signup_refusal(authenticator.client_key(self)):
            self.set_status(429)
            self.finish(await self._refused(refusal, raw_name))
            return
        password = self.get_body_argument("signup_password", "", strip=False)
        with hashing.prepared(password, await hashing.new_hash(password)):
            await super().post()

    async def _refused(self, problem: str, raw_name: str) -> Any:
        authenticator: LabAuthenticator = self.authenticator
        return await self.render_template(
            "signup.html",
            ask_email=authenticator.ask_email_on_signup,
            result_message=problem,
            alert="alert-danger",
            username=raw_name,
            email=self.get_body_argument("email", "", strip=True),
            two_factor_auth=authenticator.allow_2fa,
            recaptcha_key=authenticator.recaptcha_key,
            tos=authenticator.tos,
        )


def _only_by_post() -> None:
    """NativeAuthenticator approves, revokes and discards people with plain GET links, which
    any page - a member's notebook served on the hub's own origin included - can make an
    admin's browser follow. Here a GET changes nothing; the buttons on /hub/authorize post a
    form with the XSRF token."""
    raise web.HTTPError(
        405, "Approve, revoke and discard people with the buttons on the hub's /hub/authorize page."
    )


class LabToggleAuthorizationHandler(LabPage, ToggleAuthorizationHandler):
    """POST /hub/authorize/NAME with authorized=yes|no: approving makes the Unix account.

    The form says which state it wants (not a toggle), so a double click or a resubmitted
    form never undoes what the admin meant."""

    async def get(self, slug: str) -> None:
        _only_by_post()

    @admin_users_scope
    async def post(self, slug: str) -> None:
        wanted = self.get_body_argument("authorized", "yes").strip().lower() in ("yes", "1", "true")
        info = UserInfo.find(self.db, slug)
        if info is None:
            raise web.HTTPError(404, f"Nobody called {slug!r} has signed up.")
        if not wanted and slug == self.current_user.name:
            raise web.HTTPError(400, "You cannot revoke your own approval; ask another admin.")
        if bool(info.is_authorized) != wanted:
            info.is_authorized = wanted
            self.db.commit()
            self.log.info(
                "%s %s %s", self.current_user.name, "approved" if wanted else "revoked", slug
            )
        if not wanted:
            await self._end_access(slug)
        if wanted:
            try:
                await asyncio.to_thread(self.authenticator.approved, info.username)
            except users.AccountProblem as problem:
                info.is_authorized = False
                self.db.commit()
                raise web.HTTPError(409, str(problem)) from None
        self.redirect(self.hub.base_url + "authorize#user-" + url_escape(slug, plus=False))

    async def _end_access(self, name: str) -> None:
        """A revoked member is out at once: their server (and so their kernels) stops, every
        login session and token of theirs stops working, their processes in the hub end."""
        user = self.find_user(name)
        if user is not None:
            for server_name, spawner in list(user.spawners.items()):
                if spawner.active:
                    await self.stop_single_user(user, server_name)
            user.orm_user.cookie_id = new_token()  # every browser session's cookie
            for token in list(user.orm_user.api_tokens):
                self.db.delete(token)
            self.db.commit()
        if self.authenticator.manage_unix_accounts:
            await asyncio.to_thread(users.end_processes, name)
        ended = await asyncio.to_thread(end_jobs_of, name, self.log)
        self.log.info("Ended %s's sessions, server, processes and %d jobs", name, ended)


def end_jobs_of(name: str, log: Any) -> int:
    """Cancel a revoked member's notebook jobs and schedules (the broker owns them, outside
    the hub: stopping her server does not end them); how many. As root, through the lab's
    broker; a lab without one (no socket) has no jobs."""
    from labnotebook.provisioner.broker_client import BrokerEngine

    from .job_store import ENDED
    from .settings import BROKER_SOCKET

    if not BROKER_SOCKET.exists():
        return 0
    reason = "cancelled: its owner's access to the lab was revoked"
    ended = 0
    try:
        broker = BrokerEngine(str(BROKER_SOCKET), timeout=30)
        for job in broker.jobs(everyone=True):
            if job.get("owner") == name and job.get("state") not in ENDED:
                broker.job_cancel(job["id"], reason=reason)
                ended += 1
    except Exception:  # the revocation stands; the admin sees why the jobs did not end
        log.exception("Could not end the notebook jobs of %s: cancel them with `labnotebook "
                      "jobs cancel ID` as an admin", name)  # fmt: skip
    return ended


class LabAuthorizationAreaHandler(LabPage, AuthorizationAreaHandler):
    """/hub/authorize: the people who signed up, with POST forms to approve or discard."""

    @web.authenticated
    async def get(self) -> None:
        # Logged out, the README's link leads to the login page and back, not to a bare 403.
        await super().get()


def _refuse_long_password(handler: web.RequestHandler, *fields: str) -> str | None:
    for field in fields:
        if message := too_long(handler.get_body_argument(field, "", strip=False)):
            return message
    return None


class LabDiscardHandler(LabPage, DiscardHandler):
    """POST /hub/discard/NAME: delete a sign-up that was never approved."""

    async def get(self, user_name: str) -> None:
        _only_by_post()

    @admin_users_scope
    async def post(self, user_name: str) -> None:
        info = self.authenticator.get_user(user_name)
        if info is not None and not info.is_authorized:
            # As NativeAuthenticator's GET did: its own record, and the hub's if there is one.
            self.authenticator.delete_user(type("User", (), {"name": user_name}))
            if self.users.get(user_name) is not None:
                self.users.delete(user_name)
            self.log.info("%s discarded the sign-up of %s", self.current_user.name, user_name)
        self.redirect(self.hub.base_url + "authorize")


class LabChangePasswordHandler(LabPage, ChangePasswordHandler):
    """Changing one's own password: the policy's message instead of a generic one."""

    @web.authenticated
    async def post(self) -> None:
        # NativeAuthenticator's, with both bcrypt steps off the event loop.
        user = await self.get_current_user()
        authenticator: LabAuthenticator = self.authenticator
        old = self.get_body_argument("old_password", "", strip=False)
        new = self.get_body_argument("new_password", "", strip=False)
        message = _refuse_long_password(self, "old_password", "new_password")
        if message is None:
            info = authenticator.get_user(user.name)
            stored = bytes(info.password) if info is not None and info.password else None
            if not await hashing.check(old, stored):
                message = "Your current password was incorrect. Please try again."
            elif new != self.get_body_argument("new_password_confirmation", "", strip=False):
                message = "Your new password didn't match the confirmation. Please try again."
            else:
                message = password_problem(user.name, new, authenticator.minimum_password_length)
        if message is None:
            with hashing.prepared(new, await hashing.new_hash(new)):
                authenticator.change_password(user.name, new)
            alert, message = "alert-success", "Your password has been changed successfully!"
        else:
            self.set_status(400)
            alert = "alert-danger"
        html = await self.render_template(
            "change-password.html", user_name=user.name, result_message=message, alert=alert
        )
        self.finish(html)


class LabChangePasswordAdminHandler(LabPage, ChangePasswordAdminHandler):
    """An admin setting someone's password: the policy's message instead of a generic one."""

    @admin_users_scope
    async def post(self, user_name: str) -> None:
        authenticator: LabAuthenticator = self.authenticator
        new = self.get_body_argument("new_password", "", strip=False)
        message = _refuse_long_password(self, "new_password") or password_problem(
            user_name, new, authenticator.minimum_password_length
        )
        if message is not None:
            self.set_status(400)
            html = await self.render_template(
                "change-password-admin.html", user_name=user_name, result_message=message,
                alert="alert-danger",
            )  # fmt: skip
            self.finish(html)
            return
        with hashing.prepared(new, await hashing.new_hash(new)):
            await super().post(user_name)
