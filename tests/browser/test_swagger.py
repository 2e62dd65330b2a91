"""The API explorer in a real browser: Debian's headless Chromium on the local stack.

Playwright drives ``/usr/bin/chromium`` (installed by ``scripts/install-browser.sh``;
Playwright's own browser downloads are never used). The test finds every operation
in Swagger UI, creates an account through "Try it out", checks the answer and that
the account exists, and saves ``artifacts/swagger.png``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Locator, Page, expect, sync_playwright

from chalicelib import openapi

pytestmark = pytest.mark.stack

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parents[2] / "artifacts" / "swagger.png"
#: Flags that work as root in a container with no display, GPU or network.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """Headless Chromium with a fresh profile, for the module."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-browser.sh (make test does)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    page = browser.new_page()
    yield page
    page.close()


def watch_for_trouble(page: Page) -> list[str]:
    """Script errors, failed requests and error responses while the page works."""
    trouble: list[str] = []
    page.on("pageerror", lambda error: trouble.append(f"script error: {error}"))
    page.on("requestfailed", lambda request: trouble.append(f"failed: {request.url}"))
    page.on(
        "response",
        lambda response: (
            trouble.append(f"{response.status}: {response.url}") if response.status >= 400 else None
        ),
    )
    return trouble


def test_swagger_ui_lists_every_operation_and_creates_an_account(
    api_url: str, api: Any, page: Page
) -> None:
    trouble = watch_for_trouble(page)

    # GIVEN the explorer, served by the app itself (no CDN)
    page.goto(f"{api_url}/swagger")
    expect(page.locator(".opblock").first).to_be_visible()

    # THEN it shows every operation of the contract, grouped by tag
    shown = set(page.eval_on_selector_all(".opblock", "blocks => blocks.map(b => b.id)"))
    assert shown == {f"operations-{op.tag}-{op.operation_id}" for op in openapi.OPERATIONS}
    expect(page.locator(".info .title")).to_contain_text("distributed-counter")

    # WHEN "Create account" is executed through "Try it out"
    operation = page.locator("#operations-accounts-createAccount")
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    username = f"browser-{uuid.uuid4().hex[:8]}"
    request_body = {"username": username, "max_number_of_services": 3}
    operation.locator("textarea.body-param__text").fill(json.dumps(request_body))
    operation.get_by_role("button", name="Execute").click()

    # THEN the live response is a 200 with the new account, sent to this server
    live = operation.locator(".live-responses-table tr.response")
    expect(live.locator(".response-col_status")).to_have_text("200", timeout=TIMEOUT_MS)
    expect(operation.locator(".request-url pre")).to_have_text(f"{api_url}/accounts")
    account = json.loads(live.locator(".response-col_description pre").first.inner_text())
    assert account["username"] == username
    assert account["max_number_of_services"] == 3
    assert account["number_of_services"] == 0
    uuid.UUID(account["id"])

    # AND the account really exists
    stored = api.get(f"/accounts/{account['id']}")
    assert stored.status_code == 200
    assert stored.json()["username"] == username

    save_screenshots(page, operation, live)
    assert trouble == []


def save_screenshots(page: Page, operation: Locator, live: Locator) -> None:
    """``swagger.png``: the page's top down to the live answer; plus the whole page."""
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT.with_name("swagger-full.png")), full_page=True)
    answer = live.bounding_box()  # relative to the viewport, which may have scrolled
    assert answer is not None
    bottom = answer["y"] + answer["height"] + page.evaluate("window.scrollY") + 24
    width = page.viewport_size["width"] if page.viewport_size else 1280
    page.screenshot(
        path=str(SCREENSHOT),
        full_page=True,
        clip={"x": 0, "y": 0, "width": width, "height": bottom},
    )
    assert SCREENSHOT.stat().st_size > 10_000
