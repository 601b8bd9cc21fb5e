"""What the browser tests share: app.py on a free port with a tiny local teacher and student, Playwright (pip)
driving Debian's /usr/bin/chromium against it, and the form filled the way a user fills it. A test module
imports the fixtures it uses (app_url, page) and gets its own app and browser. Screenshots go to
test-output/e2e/. Without chromium, importing this skips the importing module (or fails, where the
browser tests must run: DW_REQUIRE_BROWSER)."""
import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "test-output" / "e2e"

if not CHROMIUM.exists():
    if os.environ.get("DW_REQUIRE_BROWSER"):
        raise RuntimeError("DW_REQUIRE_BROWSER is set but /usr/bin/chromium is missing (apt-get install chromium)")
    pytest.skip("no /usr/bin/chromium (apt-get install chromium) for the browser tests", allow_module_level=True)

from apphost import running_app  # noqa: E402
from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

expect.set_options(timeout=60_000)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, defaults_root, teacher_dir):
    runs = tmp_path_factory.mktemp("e2e") / "runs"
    with running_app(["--runs-dir", str(runs), "--cache-dir", str(defaults_root.parent),
                      "--allow-dir", str(teacher_dir.parent)]) as url:
        yield url, runs


@pytest.fixture(scope="module")
def page(app_url):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1400, "height": 1800})
        tab.set_default_timeout(60_000)
        tab.goto(app_url[0])
        tab.wait_for_selector("text=Distill Workbench")
        yield tab
        browser.close()


def fill_form(page: Page, teacher_dir: Path, student_dir: Path, corpus: Path, alpha: str, run_name: str) -> None:
    page.get_by_role("tab", name="Set up").click()
    page.locator("#setup-teacher-name_or_path textarea").fill(str(teacher_dir))
    page.locator("#setup-student-name_or_path textarea").fill(str(student_dir))
    page.locator("#setup-loss-alpha input").fill(alpha)
    page.locator("#setup-train-max_steps input").fill("8")
    page.locator("#setup-train-seq_len input").fill("32")
    page.locator("#setup-output-run_name textarea").fill(run_name)
    page.locator("#setup-train-bf16 input").click()
    page.get_by_role("option", name="off").click()
    if page.locator("#setup-data_upload").count() == 0:  # the first time: choose upload, then the file
        page.locator("#setup-data_kind").get_by_text("upload a file").click()
        page.locator("#setup-data_upload input[type=file]").set_input_files(str(corpus))
    expect(page.locator("#setup-data_upload").get_by_role("cell", name=corpus.name)).to_be_visible()


def wait_for_text(page: Page, selector: str, text: str, count: int = 1) -> None:
    page.wait_for_function("([sel, text, n]) => (document.querySelector(sel)?.innerText ?? '').split(text).length > n",
                           arg=[selector, text, count])
