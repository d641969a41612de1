"""`LabAuthenticator`: NativeAuthenticator with the lab's rules.

NativeAuthenticator gives the workflow the lab wants - people sign up, an admin approves them
at /hub/authorize, they log in - with weak defaults and generic error messages. This subclass
adds:

- admin bootstrap: signing up under an admin name needs the one-time setup token
  (`bootstrap.py`), so whoever reaches the port first cannot claim the hub;
- sign-up checks with a specific message each: user names `useradd` would refuse or that are
  system accounts (`names.py`), and a real password policy (`passwords.py`), including
  passwords over bcrypt's 72 bytes (which crash bcrypt >= 5 with a 500 otherwise);
- a lockout after repeated failed logins, that says so;
- Unix accounts (`users.py`): made when an admin approves a person, checked at each login
  (which also sets the account's password to the hub password, for sudo), and removed (home
  and UID kept) when the hub user is deleted.

Tested with JupyterHub 5.x and NativeAuthenticator 1.3.0 (its login fails on JupyterHub 6).
"""

from __future__ import annotations

import asyncio
import os
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
from traitlets import Bool, Integer, default

from . import bootstrap, users
from .names import name_problem
from .passwords import password_problem, too_long

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
        help="""Failed logins in a row after which a user name is locked for
        `seconds_before_next_try`. 0 disables the lockout (NativeAuthenticator's default).""",
    )
    seconds_before_next_try = Integer(
        300,
        config=True,
        help="Seconds a user name stays locked after `allowed_failed_logins` failures.",
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

    # -- accounts ------------------------------------------------------------------------------

    def create_user(self, username: str, password: str, **kwargs: Any) -> UserInfo | None:
        user = super().create_user(username, password, **kwargs)
        if user is not None and self.normalize_username(username) in self.admin_users:
            bootstrap.consume_token()
            self.log.info("Admin %s signed up; the setup token is used up.", user.username)
        return user

    async def authenticate(self, handler: web.RequestHandler, data: dict[str, str]) -> str | None:
        if too_long(data.get("password", "")):
            return None  # bcrypt >= 5 would raise; LabLoginHandler shows why.
        username = await super().authenticate(handler, data)
        if username and self.manage_unix_accounts:
            found = orm.User.find(self.db, username)
            admin = username in self.admin_users or bool(found and found.admin)
            await asyncio.to_thread(self._sync_account, username, data["password"], admin)
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
        authenticator: LabAuthenticator = self.authenticator
        username = authenticator.normalize_username(self.get_body_argument("username", ""))
        password = self.get_body_argument("password", "", strip=False)
        message = too_long(password)
        if message is None and authenticator.is_blocked(username):
            minutes = max(1, round(authenticator.seconds_before_next_try / 60))
            message = (
                f"Too many failed logins for {username!r}. Please wait {minutes} minute"
                f"{'s' if minutes != 1 else ''} and try again."
            )
        if message is not None:
            self.set_status(403 if authenticator.is_blocked(username) else 400)
            self.finish(await self._render(login_error=message, username=username))
            return
        await super().post()


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
            html = await self.render_template(
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
            self.finish(html)
            return
        await super().post()


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
        self.log.info("Ended %s's sessions, server and processes", name)


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
        user = await self.get_current_user()
        authenticator: LabAuthenticator = self.authenticator
        new = self.get_body_argument("new_password", "", strip=False)
        message = _refuse_long_password(self, "old_password", "new_password")
        if message is None and new == self.get_body_argument(
            "new_password_confirmation", "", strip=False
        ):
            message = password_problem(user.name, new, authenticator.minimum_password_length)
        if message is not None:
            self.set_status(400)
            html = await self.render_template(
                "change-password.html", user_name=user.name, result_message=message,
                alert="alert-danger",
            )  # fmt: skip
            self.finish(html)
            return
        await super().post()


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
        await super().post(user_name)
