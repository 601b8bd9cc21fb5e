"""The workbench in a real browser: Playwright (pip) driving Debian's /usr/bin/chromium against app.py on a
free port, with a tiny local teacher and student. Screenshots go to test-output/e2e/."""
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


def test_set_up_launch_watch_and_compare_in_the_browser(page, app_url, teacher_dir, student_dir, corpus_files):
    _, runs = app_url
    train_file = corpus_files[0]

    fill_form(page, teacher_dir, student_dir, train_file, alpha="1.5", run_name="bad-alpha")
    page.get_by_role("button", name="Launch").click()
    wait_for_text(page, "#setup-verdict", "loss.alpha")
    expect(page.locator("#setup-verdict")).to_contain_text("Not launched")
    page.screenshot(path=SHOTS / "1-invalid-alpha.png", full_page=True)
    assert not (runs / "bad-alpha").exists()  # nothing launched

    for alpha, name in (("0.5", "alpha-half"), ("0.2", "alpha-fifth")):
        fill_form(page, teacher_dir, student_dir, train_file, alpha=alpha, run_name=name)
        page.get_by_role("button", name="Launch").click()
        wait_for_text(page, "#setup-verdict", f"Launched {name}")
    page.screenshot(path=SHOTS / "2-launched.png", full_page=True)

    page.get_by_role("tab", name="Runs").click()
    wait_for_text(page, "#jobs-table", "succeeded", count=2)
    page.wait_for_function("document.querySelectorAll('#run-curves .scatterlayer .trace').length >= 2")
    page.screenshot(path=SHOTS / "3-runs.png", full_page=True)

    page.get_by_role("tab", name="Compare").click()
    for name in ("alpha-half", "alpha-fifth"):
        page.locator("#compare-runs input").click()
        page.get_by_role("option", name=name).click()
    page.wait_for_function("document.querySelectorAll('#compare-curves .scatterlayer .trace').length >= 2")
    wait_for_text(page, "#compare-table", "alpha-fifth")
    expect(page.locator("#compare-table")).to_contain_text("alpha-half")
    page.screenshot(path=SHOTS / "4-compare.png", full_page=True)


def test_inspect_a_finished_run_in_the_browser(page, app_url):
    """After the first test's runs: the heatmap of a text, both distributions, a click on a token, and the
    run card of the evaluation the job ran at its end."""
    page.get_by_role("tab", name="Inspect").click()
    page.locator("#inspect-run input").click()
    page.get_by_role("option", name="alpha-half").click()
    page.locator("#inspect-text textarea").fill("the cat sees <b>the red ball</b> by the river.")
    page.locator("#inspect-go").click()
    page.wait_for_selector("#inspect-heatmap span.dw-tok[data-pos]")
    heatmap = page.locator("#inspect-heatmap")
    expect(heatmap).to_contain_text("<b>the red ball</b>")  # markup in the text shows as text
    assert heatmap.locator("b").count() == 0
    page.wait_for_function("document.querySelectorAll('#inspect-distributions .trace.bars').length == 2")
    title = page.locator("#inspect-distributions .gtitle")
    before = title.text_content()  # SVG text: no innerText
    heatmap.locator("span.dw-tok[data-pos='3']").click()
    expect(heatmap.locator("span.dw-selected[data-pos='3']")).to_be_visible()
    page.wait_for_function("([sel, old]) => document.querySelector(sel)?.textContent !== old",
                           arg=["#inspect-distributions .gtitle", before])
    page.screenshot(path=SHOTS / "5-inspect.png", full_page=True)

    page.get_by_role("tab", name="Evaluate").click()
    page.locator("#evaluate-run input").click()
    page.get_by_role("option", name="alpha-half").click()
    expect(page.locator("#evaluate-card")).to_contain_text("smaller")
    expect(page.locator("#evaluate-table")).to_contain_text("untrained")
    page.screenshot(path=SHOTS / "6-evaluate.png", full_page=True)
    # every tab once, after visiting them all (Gradio repeats or drops tabs if anything but a Tab sits in Tabs)
    assert [t.inner_text() for t in page.get_by_role("tab").all()] == ["Set up", "Runs", "Inspect", "Evaluate",
                                                                     "Compare", "Config"]


def test_each_strategy_shows_its_own_fields_in_the_browser(page, app_url):
    """Choosing hard_label swaps the soft-label knobs and the data choice for the generation fields (the
    endpoint fields only for the openai backend); co-distillation and attention show theirs."""
    page.get_by_role("tab", name="Set up").click()
    page.locator("#setup-strategy input").click()
    page.get_by_role("option", name="hard_label").click()
    expect(page.locator("#setup-generation-backend")).to_be_visible()
    expect(page.locator("#setup-generation-prompts textarea")).to_have_value("project:instructions")
    expect(page.locator("#setup-loss-alpha")).to_be_hidden()
    expect(page.locator("#setup-data_kind")).to_be_hidden()
    expect(page.locator("#setup-generation-api_base_url")).to_be_hidden()
    page.locator("#setup-generation-backend input").click()
    page.get_by_role("option", name="openai").click()
    expect(page.locator("#setup-generation-api_key_env textarea")).to_have_value("OPENAI_API_KEY")
    page.screenshot(path=SHOTS / "7-hard-label.png", full_page=True)
    page.locator("#setup-strategy input").click()
    page.get_by_role("option", name="co_distillation").click()
    expect(page.locator("#setup-co_distillation-teacher_lr")).to_be_visible()
    expect(page.locator("#setup-loss-alpha")).to_be_hidden()  # α follows its schedule
    expect(page.locator("#setup-generation-backend")).to_be_hidden()
    page.locator("#setup-strategy input").click()
    page.get_by_role("option", name="attention").click()
    expect(page.locator("#setup-attention-heads")).to_be_visible()
    expect(page.locator("#setup-hidden-loss")).to_be_hidden()
    expect(page.locator("#setup-co_distillation-teacher_lr")).to_be_hidden()
    page.screenshot(path=SHOTS / "8-attention.png", full_page=True)
    page.locator("#setup-strategy input").click()
    page.get_by_role("option", name="soft_label").click()
    expect(page.locator("#setup-loss-alpha")).to_be_visible()
    expect(page.locator("#setup-hidden-layer_map")).to_be_hidden()
    expect(page.locator("#setup-attention-layer_map")).to_be_hidden()
    page.get_by_text("Advanced: every other config field").click()  # every other field, by section
    expect(page.locator("#setup-train-grad_accum input")).to_have_value("1")
    expect(page.locator("#setup-advanced")).to_contain_text("Micro-batches accumulated per optimizer step")
    expect(page.locator("#setup-data-max_examples textarea")).to_have_value("")  # unset: no Number's 0
    # Every field shown, what the browser sends for each passes: the form's defaults are valid values.
    page.get_by_role("button", name="Pre-flight check").click()
    page.wait_for_function("(document.querySelector('#setup-verdict')?.innerText ?? '').match(/^(?!.*Launched)"
                           "(?=.*(Ready to launch|Not launched))/s)")
    expect(page.locator("#setup-verdict")).to_contain_text("Ready to launch")
    page.get_by_text("Advanced: every other config field").click()


HOSTILE = "<img src=x onerror=alert(1)>"


def test_hostile_text_renders_as_text(page, app_url, teacher_dir, student_dir, corpus_files):
    """A run folder named with markup, an evaluation whose generations hold it, and a teacher-written
    dataset whose rows hold it (run folders may come from anywhere): every tab shows the text, and no
    script runs (a dialog would fire)."""
    import json
    import shutil
    _, runs = app_url
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    name = f"x{HOSTILE}"
    folder = runs / name
    shutil.copytree(runs / "alpha-half", folder, ignore=shutil.ignore_patterns("checkpoints", "student"))
    report_path = next((folder / "evaluations").glob("step-*.json"))
    report = json.loads(report_path.read_text())
    report.update(run_id=name, student=HOSTILE, card=f"card {HOSTILE}",
                  generations=[{"prompt": HOSTILE, "teacher": HOSTILE, "student": HOSTILE}])
    report_path.write_text(json.dumps(report))
    (folder / "generated").mkdir()
    (folder / "generated" / "manifest.json").write_text(json.dumps(
        {"settings": {"teacher": HOSTILE}, "rows_total": 1, "complete": True, "started": 1.0}))
    (folder / "generated" / "completions.jsonl").write_text(json.dumps(
        {"prompt": HOSTILE, "completion": HOSTILE, "finish_reason": HOSTILE, "prompt_index": 0, "sample": 0}) + "\n")

    page.get_by_role("tab", name="Runs").click()
    wait_for_text(page, "#jobs-table", "onerror")
    option = page.get_by_role("option", name=name)
    deadline = time.time() + 60
    while time.time() < deadline:  # Compare lists the store's runs: the app ingests the new folder first
        page.get_by_role("tab", name="Runs").click()
        page.get_by_role("tab", name="Compare").click()
        page.locator("#compare-runs input").click()
        if option.count():
            break
        time.sleep(1)
    option.click()
    wait_for_text(page, "#compare-table", "onerror")
    page.get_by_role("tab", name="Evaluate").click()
    page.locator("#evaluate-run input").click()
    page.get_by_role("option", name=name).click()
    expect(page.locator("#evaluate-card")).to_contain_text(f"card {HOSTILE}")
    expect(page.locator("#evaluate-generations")).to_contain_text(HOSTILE)
    page.get_by_role("tab", name="Set up").click()
    page.locator("#setup-strategy input").click()
    page.get_by_role("option", name="hard_label").click()
    page.get_by_text("Teacher-written datasets").click()
    page.get_by_role("button", name="Refresh").last.click()
    page.get_by_label("Look at").click()
    page.get_by_role("option", name=f"{name} (1/1 rows)").click()
    expect(page.locator("#dataset-rows")).to_contain_text(HOSTILE)
    page.screenshot(path=SHOTS / "9-hostile-text.png", full_page=True)
    assert dialogs == [] and page.locator("img[src='x']").count() == 0
    page.locator("#setup-strategy input").click()
    page.get_by_role("option", name="soft_label").click()
