"""A lab member's browser, reduced to HTTP: sign-up and login forms, the server, kernels.

Everything goes through the hub's public port the way a browser does it - real form posts
with the `_xsrf` field, cookies, redirects - except running code, which uses the Jupyter
server's kernel websocket with a token the user creates for themselves.

The login flow (also what a browser test automates):

1. GET  /hub/signup, POST /hub/signup  (username, signup_password,
   signup_password_confirmation, setup_token for the first admin, _xsrf)
2. an admin approves: POST /hub/authorize/NAME (authorized=yes, _xsrf: the form on
   /hub/authorize)
3. GET  /hub/login, POST /hub/login?next=  (username, password, _xsrf) -> 302 to /hub/
4. GET  /hub/spawn -> server starts -> /user/NAME/lab (JupyterLab)
"""

from __future__ import annotations

import html
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import requests
import websocket

_XSRF_FIELD = re.compile(r'name="_xsrf"\s+value="([^"]+)"')
_ALERT = re.compile(r'<div class="alert ([a-z-]+)"[^>]*>\s*<p>\s*(.*?)\s*</p>', re.S)
_LOGIN_ERROR = re.compile(r'<p class="login_error">\s*(.*?)\s*</p>', re.S)


@dataclass
class Reply:
    """What a form post answered: the HTTP status, the message shown, and the final URL."""

    status: int
    message: str
    url: str
    alert: str = ""


@dataclass
class Execution:
    stdout: str = ""
    stderr: str = ""
    error: str = ""
    status: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)


class HubUser:
    def __init__(self, base_url: str, name: str, password: str, ca_file: str | None) -> None:
        """`ca_file`: the hub's (self-signed) certificate to trust; None for plain HTTP."""
        self.base_url = base_url.rstrip("/") + "/"
        self.name = name
        self.password = password
        self.ca_file = ca_file
        self.session = requests.Session()
        # No REQUESTS_CA_BUNDLE or proxies from the environment: the hub is on this machine.
        self.session.trust_env = False
        self.session.verify = ca_file or True
        self.token: str | None = None

    # -- forms ---------------------------------------------------------------------------------

    def _form(self, path: str) -> str:
        page = self.session.get(self.base_url + path, timeout=30)
        page.raise_for_status()
        match = _XSRF_FIELD.search(page.text)
        assert match, f"no _xsrf field on {path}"
        return html.unescape(match.group(1))

    def signup(
        self, *, password: str | None = None, confirmation: str | None = None, token: str = ""
    ) -> Reply:
        password = self.password if password is None else password
        xsrf = self._form("hub/signup")
        data = {
            "_xsrf": xsrf,
            "username": self.name,
            "signup_password": password,
            "signup_password_confirmation": password if confirmation is None else confirmation,
        }
        if token:
            data["setup_token"] = token
        reply = self.session.post(self.base_url + "hub/signup", data=data, timeout=60)
        found = _ALERT.search(reply.text)
        alert, message = (found.group(1), _text(found.group(2))) if found else ("", "")
        return Reply(reply.status_code, message, reply.url, alert)

    def login(self, password: str | None = None) -> Reply:
        """Log in with the form, as a new browser session would."""
        self.session.cookies.clear()
        self.token = None
        xsrf = self._form("hub/login")
        reply = self.session.post(
            self.base_url + "hub/login?next=",
            data={
                "_xsrf": xsrf,
                "username": self.name,
                "password": self.password if password is None else password,
            },
            timeout=60,
            allow_redirects=False,
        )
        found = _LOGIN_ERROR.search(reply.text)
        return Reply(
            reply.status_code,
            _text(found.group(1)) if found else "",
            reply.headers.get("Location", reply.url),
        )

    @property
    def logged_in(self) -> bool:
        return any(c.name == "jupyterhub-session-id" for c in self.session.cookies) and (
            self.session.get(self.base_url + "hub/home", timeout=30, allow_redirects=False)
            .status_code == 200
        )  # fmt: skip

    def approve(self, name: str) -> None:
        """As an admin: submit `name`'s "Authorize" form on /hub/authorize (if not yet)."""
        page = self.session.get(self.base_url + "hub/authorize", timeout=60)
        page.raise_for_status()
        row = re.search(rf'<tr id="user-{re.escape(name)}".*?</tr>', page.text, re.S)
        assert row, f"{name} is not on the authorization page"
        form = re.search(r'<form method="post" action="([^"]*authorize/[^"]*)">(.*?)</form>',
                         row.group(0), re.S)  # fmt: skip
        assert form, row.group(0)
        fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', form.group(2)))
        if fields.get("authorized") == "yes":
            reply = self.session.post(
                urljoin(page.url, html.unescape(form.group(1))),
                data={k: html.unescape(v) for k, v in fields.items()},
                timeout=60,
            )
            reply.raise_for_status()
            assert "/hub/authorize" in reply.url, reply.url

    # -- the server ----------------------------------------------------------------------------

    def start_server(self, timeout: float = 120) -> float:
        """Start the server as the browser does (GET /hub/spawn); seconds until JupyterLab."""
        started = time.monotonic()
        reply = self.session.get(self.base_url + "hub/spawn", timeout=timeout)
        deadline = started + timeout
        while "/lab" not in reply.url and time.monotonic() < deadline:
            time.sleep(0.5)
            reply = self.session.get(self.base_url + f"user/{self.name}/lab", timeout=timeout)
        assert reply.status_code == 200 and "/lab" in reply.url, (reply.status_code, reply.url)
        return time.monotonic() - started

    def api_token(self) -> str:
        """A token for the hub and server APIs, made with the login session (like the UI)."""
        if self.token is None:
            xsrf = self.session.cookies.get("_xsrf", path="/hub/")
            reply = self.session.post(
                self.base_url + f"hub/api/users/{self.name}/tokens",
                json={"note": "tests", "expires_in": 3600},
                headers={"X-XSRFToken": xsrf or ""},
                timeout=30,
            )
            assert reply.status_code == 201, (reply.status_code, reply.text)
            self.token = reply.json()["token"]
        return self.token

    def server_api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"token {self.api_token()}"}
        return self.session.request(
            method,
            self.base_url + f"user/{self.name}/api/{path}",
            headers=headers,
            timeout=kwargs.pop("timeout", 180),
            **kwargs,
        )

    def hub_api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"token {self.api_token()}"}
        return self.session.request(
            method, self.base_url + f"hub/api/{path}", headers=headers,
            timeout=kwargs.pop("timeout", 60), **kwargs,
        )  # fmt: skip

    def stop_server(self) -> None:
        reply = self.hub_api("DELETE", f"users/{self.name}/server")
        assert reply.status_code in (202, 204), (reply.status_code, reply.text)

    # -- kernels -------------------------------------------------------------------------------

    def start_kernel(self, name: str = "python-docker") -> str:
        reply = self.server_api("POST", "kernels", json={"name": name})
        assert reply.status_code == 201, (reply.status_code, reply.text)
        return reply.json()["id"]

    def shutdown_kernel(self, kernel_id: str) -> None:
        self.server_api("DELETE", f"kernels/{kernel_id}")

    def execute(self, kernel_id: str, code: str, timeout: float = 60) -> Execution:
        url = self.base_url.replace("https://", "wss://").replace("http://", "ws://")
        ws = websocket.create_connection(
            url + f"user/{self.name}/api/kernels/{kernel_id}/channels",
            header=[f"Authorization: token {self.api_token()}"],
            sslopt={"ca_certs": self.ca_file} if self.ca_file else {},
            timeout=timeout,
        )
        try:
            msg_id = uuid.uuid4().hex
            ws.send(json.dumps({
                "header": {"msg_id": msg_id, "msg_type": "execute_request",
                           "username": self.name, "session": uuid.uuid4().hex,
                           "version": "5.3", "date": ""},
                "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                "content": {"code": code, "silent": False, "store_history": False,
                            "user_expressions": {}, "allow_stdin": False},
            }))  # fmt: skip
            result = Execution()
            deadline = time.monotonic() + timeout
            replied = idle = False
            # Short reads: the server's websocket pings would otherwise keep one long read
            # waiting forever on a kernel that died and never replies.
            ws.settimeout(1)
            while not (replied and idle) and time.monotonic() < deadline:
                try:
                    message = json.loads(ws.recv())
                except websocket.WebSocketTimeoutException:
                    continue
                if message.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                result.messages.append(message)
                kind, content = message["msg_type"], message["content"]
                if kind == "stream":
                    if content["name"] == "stdout":
                        result.stdout += content["text"]
                    else:
                        result.stderr += content["text"]
                elif kind == "error":
                    result.error = f"{content['ename']}: {content['evalue']}"
                elif kind == "execute_reply":
                    replied, result.status = True, content["status"]
                elif kind == "status" and content["execution_state"] == "idle":
                    idle = True
            assert replied, f"no reply to the execution within {timeout}s"
            return result
        finally:
            ws.close()

    # -- terminals -------------------------------------------------------------------------------

    def terminal(self, command: str, until: str, timeout: float = 120) -> str:
        """Type `command` into a new JupyterLab terminal (a login shell in the hub, as the
        member) and read its screen until `until` appears; the terminal is closed after."""
        reply = self.server_api("POST", "terminals")
        assert reply.status_code == 200, (reply.status_code, reply.text)
        name = reply.json()["name"]
        url = self.base_url.replace("https://", "wss://").replace("http://", "ws://")
        ws = websocket.create_connection(
            url + f"user/{self.name}/terminals/websocket/{name}",
            header=[f"Authorization: token {self.api_token()}"],
            sslopt={"ca_certs": self.ca_file} if self.ca_file else {},
            timeout=timeout,
        )
        screen = ""
        try:
            ws.send(json.dumps(["stdin", command + "\r"]))
            deadline = time.monotonic() + timeout
            ws.settimeout(1)
            while until not in screen and time.monotonic() < deadline:
                try:
                    message = json.loads(ws.recv())
                except websocket.WebSocketTimeoutException:
                    continue
                if message[0] == "stdout":
                    screen += message[1]
            assert until in screen, f"{until!r} never appeared in the terminal:\n{screen[-2000:]}"
            return screen
        finally:
            ws.close()
            self.server_api("DELETE", f"terminals/{name}")


def _text(fragment: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())
