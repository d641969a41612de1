"""A person in a real browser: log in, start JupyterLab, run a cell on the Docker kernel.

Debian's Chromium, driven headless by Playwright (its own browser download cannot work here).
The screenshot of the finished notebook is kept in tests/artifacts/.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from .conftest import PASSWORDS, Lab, _signed_up_and_approved

pytestmark = [pytest.mark.hub, pytest.mark.docker, pytest.mark.browser, pytest.mark.timeout(600)]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
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


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_researcher_runs_a_cell_on_the_docker_kernel_in_jupyterlab(lab: Lab, admin, browser):
    carol = _signed_up_and_approved(lab, "carol", admin)
    uid = int(lab.exec("id", "-u", "carol").stdout)
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(120_000)
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("requestfailed", lambda r: console.append(f"failed: {r.url} {r.failure}"))
    try:
        page.goto(lab.url + "hub/login")
        page.fill("input[name=username]", carol.name)
        page.fill("input[name=password]", PASSWORDS["carol"])
        page.click("input[type=submit], button[type=submit]")
        # The hub spawns her server and redirects to JupyterLab.
        page.wait_for_url(re.compile(r"/user/carol/lab"), timeout=180_000)
        card = page.locator('.jp-LauncherCard[data-category="Notebook"][title*="Docker"]')
        card.first.click()
        page.wait_for_selector(".jp-Notebook .jp-Cell")
        # A cell run before the kernel is connected is silently dropped: wait for "Idle", as a
        # person waits for the status bar to say so.
        page.get_by_text(re.compile(r"Python 3 \(Docker\) \| Idle")).wait_for(timeout=180_000)
        editor = page.locator(".jp-Notebook .jp-Cell .cm-content").first
        editor.click()
        page.keyboard.type(
            "import os, socket; print('uid', os.getuid(), 'on', socket.gethostname())"
        )
        page.keyboard.press("Shift+Enter")
        output = page.locator(".jp-OutputArea-output").first
        page.wait_for_function(
            "() => /uid \\d+ on/.test(document.querySelector('.jp-OutputArea-output')?.innerText)",
            timeout=180_000,
        )
        text = output.inner_text()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-docker-kernel.png"), full_page=True)
        assert f"uid {uid} on" in text
        hostname = text.split(" on ")[1].strip()
        assert hostname != lab.exec("hostname").stdout.strip()  # a kernel container, not the hub
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-failure.png"), full_page=True)
        print("\n".join(console[-200:]))
        print(lab.make("logs", TAIL="all", FOLLOW="no", check=False).stderr[-30000:])
        raise
    finally:
        context.close()
