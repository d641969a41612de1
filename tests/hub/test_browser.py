"""A lab set up by people in a real browser, on a fresh hub that nobody has signed up to.

Debian's Chromium, driven headless by Playwright (its own browser download cannot work here).
Every step a person does in the browser is done by clicking and typing in the page: no form
is posted over HTTP on anyone's behalf. The only thing read outside the browser is what a
person reads outside it too: the setup token `make up` printed.

Each step leaves a screenshot in tests/artifacts/browser/; a failure also leaves a Playwright
trace (`playwright show-trace tests/artifacts/browser/trace-*.zip`), the browser console and
the hub's log.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import SESSION, Lab, free_port, run

pytestmark = [pytest.mark.hub, pytest.mark.docker, pytest.mark.browser, pytest.mark.timeout(900)]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "browser"
CHROMIUM = os.environ.get("LABNOTEBOOK_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
# Chromium's own background traffic is refused on closed networks; switch it off.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
LAB_TITLE = "Browser Test Lab"
PASSWORDS = {
    "admin": "sailboat-meadow-48-violet",
    "frida": "otter-granite-92",
    "gus": "lichen-trumpet-36",
}


@pytest.fixture(scope="module")
def fresh_lab(lab_image: str, backup_dir: Path) -> Iterator[Lab]:
    """A hub of its own, started by `make up`, that no fixture has signed anyone up to."""
    hub = Lab(f"labnotebook-test-{SESSION}-browser", free_port(), lab_image, backup_dir)
    try:
        hub.up_output = hub.make("up", LAB_TITLE=LAB_TITLE).stdout
        yield hub
    finally:
        if os.environ.get("LABNOTEBOOK_KEEP_HUB") != "1":
            hub.destroy()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Person:
    """One person at their own browser (own cookies), with a screenshot per step."""

    def __init__(self, browser, lab: Lab, name: str, journal: list[str]) -> None:
        self.name = name
        self.lab = lab
        self.journal = journal
        self.context = browser.new_context(
            ignore_https_errors=True, viewport={"width": 1300, "height": 900}
        )
        self.context.tracing.start(screenshots=True, snapshots=True, sources=False)
        self.page = self.context.new_page()
        self.page.set_default_timeout(60_000)
        self.page.on("console", lambda m: journal.append(f"[{name}] {m.type}: {m.text}"))
        self.page.on("requestfailed", lambda r: journal.append(f"[{name}] failed: {r.url}"))

    def open(self, path: str) -> None:
        self.page.goto(self.lab.url + path)

    def shot(self, step: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{step}.png"), full_page=True)

    def close(self, failed: bool) -> None:
        if failed:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            self.context.tracing.stop(path=str(ARTIFACTS / f"trace-{self.name}.zip"))
            self.shot(f"failure-{self.name}")
        else:
            self.context.tracing.stop()
        self.context.close()

    # -- what people do on the hub's pages ------------------------------------------------------

    def sign_up(self, password: str, confirmation: str | None = None, token: str = "") -> str:
        """Fill in /hub/signup and press the button; the message the page shows."""
        page = self.page
        if "/hub/signup" not in page.url:
            self.open("hub/signup")
        page.locator("#username_input").fill(self.name)
        page.locator("#password_input").fill(password)
        page.locator("#password_confirmation_input").fill(
            password if confirmation is None else confirmation
        )
        if token:
            page.locator("#setup_token_input").fill(token)
        page.get_by_role("button", name="Sign up").click()
        page.wait_for_load_state()
        return page.locator("#result-message").inner_text()

    def log_in(self, password: str) -> None:
        page = self.page
        page.locator("#username_input").fill(self.name)
        page.locator("#password_input").fill(password)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_load_state()


def _dismiss_false_server_alarms(person: Person) -> None:
    """Chromium aborts requests in flight with ERR_NETWORK_CHANGED when the host's network
    interfaces change - as they do whenever Docker starts a container - and JupyterLab then
    asks whether to restart a server that is in fact running. A person clicks "Dismiss"; so
    does the test, whenever the dialog stands in the way, and records that it did. (A server
    that really died fails the test anyway: its kernel never reaches Idle.)"""

    def dismiss(dialog) -> None:
        person.shot("server-alarm-dismissed")
        person.journal.append(f"[{person.name}] dismissed JupyterLab's server-unavailable dialog")
        dialog.get_by_role("button", name="Dismiss").click()

    person.page.add_locator_handler(
        person.page.locator(".jp-Dialog", has_text="Server unavailable"), dismiss
    )


def _title_names_the_lab(person: Person, what: str) -> None:
    title = person.page.title()
    assert LAB_TITLE in title, (what, title)


def test_a_lab_is_set_up_and_used_in_the_browser(fresh_lab: Lab, browser) -> None:
    lab = fresh_lab
    token_line = re.search(r"setup token:\s+(\S+)", lab.up_output)
    assert token_line, f"`make up` printed no setup token:\n{lab.up_output}"
    token = token_line.group(1)
    journal: list[str] = []
    admin = Person(browser, lab, "admin", journal)
    frida = Person(browser, lab, "frida", journal)
    failed = True
    try:
        # -- 1. the admin opens the sign-up page: the lab's page, with the setup token field --
        admin.open("hub/signup")
        page = admin.page
        _title_names_the_lab(admin, "sign-up page")
        assert page.locator("h1").inner_text() == f"Sign up for {LAB_TITLE}"
        assert "admin of the lab approves" in page.locator("#what-happens-next").inner_text()
        assert "starting with a letter" in page.locator("#username_help").inner_text()
        assert "At least 10 characters" in page.locator("#password_input_help").inner_text()
        assert page.locator("#setup_token_input").is_visible()
        admin.shot("01-signup-page")

        # The show/hide control has a text label and changes the fields' type, both ways.
        page.locator("#password_input").fill(PASSWORDS["admin"])
        toggle = page.locator("button.password-toggle")
        assert toggle.inner_text() == "Show"
        assert toggle.get_attribute("aria-label") == "Show the password"
        toggle.click()
        assert page.locator("#password_input").get_attribute("type") == "text"
        assert page.locator("#password_confirmation_input").get_attribute("type") == "text"
        assert toggle.inner_text() == "Hide"
        assert toggle.get_attribute("aria-pressed") == "true"
        admin.shot("02-signup-password-shown")
        toggle.click()
        assert page.locator("#password_input").get_attribute("type") == "password"

        # -- 2. a wrong token is refused; what was typed stays, except the password -----------
        message = admin.sign_up(PASSWORDS["admin"], token="not-the-token")
        assert "needs the setup token" in message, message
        assert page.locator("#username_input").input_value() == "admin"
        assert page.locator("#password_input").input_value() == ""
        assert page.locator("#setup_token_input").is_visible()
        admin.shot("03-signup-wrong-token")

        # -- 3. the admin signs up with the token `make up` printed, and logs in ---------------
        message = admin.sign_up(PASSWORDS["admin"], token=token)
        assert "admin is signed up" in message, message
        admin.shot("04-admin-signed-up")
        page.get_by_role("link", name="Log in").click()
        _title_names_the_lab(admin, "login page")
        assert page.locator("h1").inner_text() == f"Log in to {LAB_TITLE}"
        admin.shot("05-login-page")
        admin.log_in(PASSWORDS["admin"])
        # Where the login leads in the end: her JupyterLab (the hub spawns her server on the
        # way, through /hub/spawn-pending) or the hub's home. Not a page on the way, or the
        # next step's navigation is interrupted by the rest of the redirects.
        page.wait_for_url(re.compile(r"/(hub/home|user/admin/lab)"), timeout=180_000)
        page.wait_for_load_state()

        # -- 4. a member signs up and is told an admin must approve them ----------------------
        frida.open("hub/signup")
        assert not frida.page.locator("#setup_token_input").count(), "token asked after setup"
        message = frida.sign_up(PASSWORDS["frida"])
        assert "An admin must approve your account" in message, message
        frida.shot("06-member-signed-up")
        frida.open("hub/login")
        frida.log_in(PASSWORDS["frida"])
        refusal = frida.page.locator(".login_error").inner_text()
        assert "not been authorized by an administrator yet" in refusal, refusal
        assert frida.page.locator("#username_input").input_value() == "frida"
        frida.shot("07-member-waits-for-approval")

        # -- 5. the admin approves her on /hub/authorize, by clicking ------------------------
        admin.open("hub/authorize")
        _title_names_the_lab(admin, "authorize page")
        row = page.locator("tr#user-frida")
        assert "waiting for approval" in row.inner_text()
        admin.shot("08-authorize-page")
        row.get_by_role("button", name="Authorize").click()
        page.wait_for_load_state()
        assert "approved" in page.locator("tr#user-frida").inner_text()
        assert page.locator("tr#user-frida").get_by_role("button", name="Revoke").is_visible()
        admin.shot("09-member-approved")

        # -- 6. she logs in, starts the Docker kernel from the launcher, runs a cell ----------
        uid = int(lab.exec("id", "-u", "frida").stdout)
        frida.open("hub/login")
        frida.log_in(PASSWORDS["frida"])
        fpage = frida.page
        _dismiss_false_server_alarms(frida)
        fpage.wait_for_url(re.compile(r"/user/frida/lab"), timeout=180_000)
        card = fpage.locator('.jp-LauncherCard[data-category="Notebook"][title*="Docker"]')
        card.first.wait_for(timeout=120_000)
        frida.shot("10-jupyterlab-launcher")
        card.first.click()
        fpage.wait_for_selector(".jp-Notebook .jp-Cell")
        # A cell run before the kernel is connected is dropped: wait for "Idle", as a person
        # waits for the status bar to say so.
        fpage.get_by_text(re.compile(r"Python 3 \(Docker\) \| Idle")).wait_for(timeout=180_000)
        fpage.locator(".jp-Notebook .jp-Cell .cm-content").first.click()
        fpage.keyboard.type(
            "import os, socket; print('uid', os.getuid(), 'on', socket.gethostname())"
        )
        fpage.keyboard.press("Shift+Enter")
        fpage.wait_for_function(
            "() => /uid \\d+ on \\S+/.test("
            "document.querySelector('.jp-OutputArea-output')?.innerText)",
            timeout=180_000,
        )
        text = fpage.locator(".jp-OutputArea-output").first.inner_text()
        frida.shot("11-cell-output")
        assert f"uid {uid} on" in text, text
        hostname = text.split(" on ")[1].strip()
        assert hostname != lab.exec("hostname").stdout.strip()  # a kernel container, not the hub
        failed = False
    except BaseException:
        print("\n".join(journal[-200:]))
        logs = lab.make("logs", TAIL="300", FOLLOW="no", check=False)
        print((logs.stdout + logs.stderr)[-30000:])
        raise
    finally:
        admin.close(failed)
        frida.close(failed)


def test_every_customised_page_is_the_labs(fresh_lab: Lab, browser) -> None:
    """Login, sign-up, authorize and both change-password pages: the lab's, not the stock ones.

    Runs after the set-up test (same hub): the admin and frida exist."""
    journal: list[str] = []
    admin = Person(browser, fresh_lab, "admin", journal)
    gus = Person(browser, fresh_lab, "gus", journal)
    failed = True
    try:
        page = admin.page
        admin.open("hub/authorize")  # not logged in: the login page, then back here
        assert "/hub/login" in page.url
        _title_names_the_lab(admin, "login page")
        assert page.get_by_role("button", name="Show the password").is_visible()
        admin.log_in(PASSWORDS["admin"])
        page.wait_for_url(re.compile(r"/hub/authorize"))

        # Sign-up closed for admins, still the lab's page for everyone else.
        gus.open("hub/signup")
        _title_names_the_lab(gus, "sign-up page")
        assert "admin of the lab approves" in gus.page.content()
        message = gus.sign_up(PASSWORDS["gus"], confirmation="something-else-42")
        assert "confirmation differ" in message, message
        assert gus.page.locator("#username_input").input_value() == "gus"
        assert gus.page.locator("#password_input").input_value() == ""
        gus.sign_up(PASSWORDS["gus"])

        # A GET of an approval URL (what a link or an image in someone's page does) changes
        # nothing; the Discard button (a form) removes the sign-up.
        answer = page.goto(fresh_lab.url + "hub/authorize/gus")
        assert answer is not None and answer.status == 405
        admin.open("hub/authorize")
        assert "waiting for approval" in page.locator("tr#user-gus").inner_text()
        page.locator("tr#user-gus").get_by_role("button", name="Discard").click()
        page.wait_for_load_state()
        assert page.locator("tr#user-gus").count() == 0
        admin.shot("12-sign-up-discarded")

        # Changing one's own password, and an admin setting someone's.
        admin.open("hub/change-password")
        _title_names_the_lab(admin, "change-password page")
        assert page.locator("h1").inner_text() == "Change your password"
        toggle = page.get_by_role("button", name="Show the password")
        toggle.click()
        assert page.locator("#new_password_input").get_attribute("type") == "text"
        admin.shot("13-change-password")
        admin.open("hub/change-password/frida")
        _title_names_the_lab(admin, "admin change-password page")
        assert page.locator("h1").inner_text() == "Set a new password for frida"
        assert "At least 10 characters" in page.locator("#new_password_input_help").inner_text()
        admin.shot("14-set-password")
        failed = False
    finally:
        admin.close(failed)
        gus.close(failed)


def test_a_member_runs_her_notebook_as_a_job_and_follows_it(fresh_lab: Lab, browser) -> None:
    """JupyterLab's "Run as job" (the notebook's toolbar) and the Jobs panel (issue 18), by
    clicking: frida writes a notebook, runs it as a job, opens the executed notebook from the
    panel, then cancels a second, long job from the panel.

    Runs after the set-up test (same hub): frida exists, and her server runs."""
    lab = fresh_lab
    journal: list[str] = []
    frida = Person(browser, lab, "frida", journal)
    failed = True
    try:
        frida.open("hub/login")
        frida.log_in(PASSWORDS["frida"])
        page = frida.page
        _dismiss_false_server_alarms(frida)
        page.wait_for_url(re.compile(r"/user/frida/lab"), timeout=180_000)
        # A new notebook of hers, from a new launcher (File > New Launcher: JupyterLab
        # restores the notebook of the set-up test); she types a cell and runs nothing here.
        page.locator(".lm-MenuBar-itemLabel", has_text="File").click()
        page.locator(".lm-Menu-itemLabel", has_text="New Launcher").click()
        page.locator('.jp-LauncherCard[data-category="Notebook"][title*="Docker"]').first.click()
        current_tab = page.locator("#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current")
        current_tab.filter(has_text=re.compile(r"\.ipynb$")).wait_for()
        name = current_tab.inner_text().strip()
        page.locator(".jp-NotebookPanel:visible .jp-Notebook .jp-Cell .cm-content").first.click()
        page.keyboard.type("import os; print('job ran in', os.getcwd(), 'answer', 6 * 7)")
        frida.shot("15-notebook-for-a-job")

        def run_as_job() -> None:
            toolbar = page.locator(".jp-NotebookPanel:visible .jp-NotebookPanel-toolbar")
            toolbar.locator('[data-jp-item-name="labnotebook-run-as-job"]').click()
            dialog = page.locator(".jp-Dialog")
            dialog.get_by_text("runs to the end in a container of its own").wait_for()
            kernel = dialog.get_by_label("Kernel")
            assert kernel.input_value() == "python-docker", kernel.input_value()
            frida.shot("16-run-as-job-dialog")
            dialog.get_by_role("button", name="Run").click()
            dialog.wait_for(state="detached")

        run_as_job()  # it saves the notebook first: the job runs what she sees
        jobs = page.locator("#labnotebook-jobs")
        jobs.wait_for()  # the panel opens by itself
        done = jobs.locator('li.lnb-Job[data-state="succeeded"]')
        done.wait_for(timeout=240_000)
        frida.shot("17-job-succeeded")
        job_id = done.get_attribute("data-job-id")
        assert job_id and name in done.inner_text(), (name, done.inner_text())
        code, status = _as_member(lab, "frida", f"labnotebook jobs status {job_id} --json")
        assert code == 0, status
        assert '"state": "succeeded"' in status, status

        # The executed notebook, opened from the panel, has the cell's output.
        output = done.locator("a.lnb-Job-output")
        assert f".job-{job_id}.ipynb" in output.inner_text(), output.inner_text()
        output.click()
        page.wait_for_function(
            "() => [...document.querySelectorAll('.jp-OutputArea-output')]"
            ".some(e => /job ran in \\/home\\/frida answer 42/.test(e.innerText))",
            timeout=60_000,
        )
        frida.shot("18-job-output-opened")

        # A long job, cancelled from the panel (after she confirms).
        tab = re.compile(rf"^\s*{re.escape(name)}\s*$")
        page.locator("#jp-main-dock-panel .lm-TabBar-tab", has_text=tab).first.click()
        page.locator(".jp-NotebookPanel:visible .jp-Notebook .jp-Cell .cm-content").first.click()
        page.keyboard.press("Control+a")
        page.keyboard.type("import time; time.sleep(600)")
        run_as_job()
        active = jobs.locator('li.lnb-Job[data-state="running"], li.lnb-Job[data-state="queued"]')
        active.first.wait_for(timeout=120_000)
        long_id = active.first.get_attribute("data-job-id")
        assert long_id and long_id != job_id
        jobs.locator(f'li.lnb-Job[data-job-id="{long_id}"]').get_by_role(
            "button", name="Cancel"
        ).click()
        page.locator(".jp-Dialog").get_by_role("button", name="Cancel job").click()
        jobs.locator(f'li.lnb-Job[data-job-id="{long_id}"][data-state="cancelled"]').wait_for(
            timeout=60_000
        )
        frida.shot("19-job-cancelled")
        # Nothing of the cancelled job is left: its runner and its kernel are removed.
        deadline = time.monotonic() + 60
        while containers := run(
            "docker", "ps", "-aq", "--filter", f"label=org.labnotebook.job-id={long_id}"
        ).stdout.split():  # fmt: skip
            assert time.monotonic() < deadline, containers
            time.sleep(1)
        failed = False
    except BaseException:
        print("\n".join(journal[-200:]))
        raise
    finally:
        frida.close(failed)


def _as_member(lab: Lab, user: str, command: str) -> tuple[int, str]:
    """`command` in a login shell of `user`'s, as her terminal runs it."""
    done = run(
        "docker", "exec", "-u", user, "-e", f"HOME=/home/{user}", "-e", f"USER={user}",
        lab.name, "bash", "-lc", command, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr
