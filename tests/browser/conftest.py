"""Real-browser fixtures: Debian's Chromium, driven by Playwright's sync API, against
pytest-django's ``live_server`` (which serves the test database and the static files).

Playwright is imported only when a fixture needs it: the test module skips itself when
Chromium or Playwright is missing, and this file must still import then.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

# The integration tests' worker machinery: a real `celery worker` process on the test database.
from tests.integration.conftest import start_worker  # noqa: F401  (a fixture, used below)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
#: Git-ignored (test-artifacts/ in .gitignore); CI may keep it as an artifact.
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
#: How long one browser step (a navigation, a click, finding an element) may take.
STEP_TIMEOUT_MS = 20_000


def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml runs pytest with --strict-markers.
    config.addinivalue_line(
        "markers", "browser: drives a real Chromium through Playwright against a live server"
    )


@pytest.fixture(scope="package")
def worker(start_worker):  # noqa: F811
    """A worker on this run's messagio queue, like the integration tests' session ``worker``
    (the admin's group replay runs as ``messagio.tasks.replay``, routed to that queue), but
    stopped once the browser tests are done, so no second worker outlives them."""
    process = start_worker([settings.MESSAGIO_QUEUE])
    yield process
    process.stop()


@pytest.fixture(scope="package")
def chromium() -> Iterator[Any]:
    """One headless Chromium for the browser tests; each test gets its own context.

    Playwright's sync API keeps an asyncio loop running in the main thread, where Django then
    refuses ORM calls ("You cannot call this from an async context"). Nothing else runs on that
    loop, so they are safe: allowed while the browser runs, and only then.
    """
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=STEP_TIMEOUT_MS)

    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


class Screen:
    """A browser tab on the live server: logs in, saves screenshots, collects what went wrong
    (JavaScript errors, failed requests) for :meth:`assert_clean`."""

    def __init__(self, page: Any, base_url: str, name: str):
        self.page = page
        self.base_url = base_url
        self.name = name
        self.problems: list[str] = []
        page.on("pageerror", lambda error: self.problems.append(f"JavaScript error: {error}"))
        page.on("response", self._check_response)

    def _check_response(self, response: Any) -> None:
        # Django's admin links no favicon; browsers ask for one anyway.
        if response.status >= 400 and not response.url.endswith("/favicon.ico"):
            self.problems.append(f"{response.status} {response.request.method} {response.url}")

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def goto(self, path: str) -> Any:
        return self.page.goto(self.url(path))

    def log_in(self, username: str, password: str = "pw") -> None:
        """Through the admin's login form, as a person would."""
        page = self.page
        self.goto("/admin/login/?next=/admin/")
        page.fill("#id_username", username)
        page.fill("#id_password", password)
        page.click("input[type=submit]")
        page.wait_for_url(re.compile(r".*/admin/$"))

    def screenshot(self, label: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{self.name}-{label}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def assert_styled(self) -> None:
        """The admin's own CSS applies (static files served): its header is not unstyled."""
        colour = self.page.eval_on_selector(
            "#header", "element => getComputedStyle(element).backgroundColor"
        )
        assert colour not in ("rgba(0, 0, 0, 0)", "transparent"), colour

    def assert_clean(self) -> None:
        assert not self.problems, "\n".join(self.problems)


@pytest.fixture
def screen(chromium, live_server, request) -> Iterator[Screen]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(STEP_TIMEOUT_MS)
    page = context.new_page()
    try:
        # Screenshots are named after the test unless it names its screen.
        yield Screen(page, live_server.url, request.node.name.removeprefix("test_"))
    finally:
        context.close()
