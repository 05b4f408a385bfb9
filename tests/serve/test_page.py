"""The page in headless Chromium (Debian's `chromium`, driven by Playwright through its executable path): ask, watch
the answer stream, click a citation to see its quote highlighted in its segment, see an abstention."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.serve.conftest import ADMIN_KEY, READ_KEY

pytestmark = pytest.mark.slow  # SmolLM2 answers

LIGHTHOUSE = {"doc_id": "bell-rock", "title": "Bell Rock Lighthouse", "text": (
    "The Bell Rock Lighthouse stands off the coast of Angus, Scotland.\nIt was built between 1807 and 1810 by Robert "
    "Stevenson.\nIts light can be seen from 35 miles away.")}


def chromium() -> str:
    """The browser's path; in CI (CI=true) a missing browser fails the test, elsewhere it skips it with the reason."""
    path = os.environ.get("RAGLESS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "no chromium: apt-get install -y chromium (make test installs it when run as root)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def test_ask_stream_and_click_a_citation_in_the_browser(server):
    from playwright.sync_api import expect, sync_playwright

    executable = chromium()
    with server.client(ADMIN_KEY) as admin:
        assert admin.post("/v1/documents", json={"documents": [LIGHTHOUSE]}).status_code == 200
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(server.url + "/")
            page.fill("#api-key", READ_KEY)
            page.fill("#question", "Who built the Bell Rock Lighthouse?")
            page.click("#ask")
            expect(page.locator("#stream")).to_contain_text("route:", timeout=120_000)  # streamed as decided
            expect(page.locator("#answer-box")).to_be_visible(timeout=120_000)
            stream = page.inner_text("#stream")
            if page.locator("#abstained").is_visible():  # the model may decline: the page must say so
                assert stream.startswith("route: abstain")
                assert page.locator(".citation").count() == 0
            else:
                assert "answer: " in stream and page.inner_text("#answer")
                citation = page.locator(".citation").first
                quote = citation.inner_text().strip("“”")
                citation.click()
                mark = page.locator("#segment mark")
                expect(mark).to_be_visible()
                assert mark.inner_text().strip() == quote  # the quoted span, highlighted in its segment
                assert quote in page.inner_text("#segment") and "Bell Rock" in page.inner_text("#source-title")
            assert not errors, errors  # no script errors (a CSP violation would be one)
        finally:
            browser.close()
