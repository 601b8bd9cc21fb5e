"""The workbench in a real browser: set up, launch, watch, compare, inspect, evaluate, each strategy's
fields, and hostile text shown as text (fixtures in browser.py)."""
import re
import time

from browser import SHOTS, app_url, fill_form, page, wait_for_text  # noqa: F401 (fixtures)
from playwright.sync_api import expect


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

    # Chat: the same run's teacher and final student answer one prompt; each student token is rated, a click
    # shows both distributions; no baseline was trained, and the column says so.
    page.get_by_role("tab", name="Chat").click()
    page.locator("#chat-run input").click()
    page.get_by_role("option", name="alpha-half").click()
    expect(page.locator("#chat-step input")).to_have_value(re.compile(r"^final \(step \d+\)$"))
    page.locator("#chat-prompt textarea").fill("the cat <b>sees</b>")
    page.locator("#chat-send").click()
    page.wait_for_selector("#chat-student span.dw-tok[data-pos]")
    expect(page.locator("#chat-baseline-head")).to_contain_text("no CE-only baseline")
    expect(page.locator("#chat-student-head")).to_contain_text("Rated by the teacher")
    page.locator("#chat-student span.dw-tok[data-pos='0']").click()
    wait_for_text(page, "#chat-detail", "answer token 1")
    page.wait_for_function("document.querySelectorAll('#chat-distributions .trace.bars').length == 2")
    page.screenshot(path=SHOTS / "5b-chat.png", full_page=True)

    page.get_by_role("tab", name="Evaluate").click()
    page.locator("#evaluate-run input").click()
    page.get_by_role("option", name="alpha-half").click()
    expect(page.locator("#evaluate-card")).to_contain_text("smaller")
    expect(page.locator("#evaluate-table")).to_contain_text("untrained")
    page.screenshot(path=SHOTS / "6-evaluate.png", full_page=True)
    # every tab once, after visiting them all (Gradio repeats or drops tabs if anything but a Tab sits in Tabs)
    assert [t.inner_text() for t in page.get_by_role("tab").all()] == ["Learn", "Set up", "Runs", "Inspect",
                                                                     "Chat", "Evaluate", "Compare", "Studies",
                                                                     "Config"]


def test_a_study_from_set_up_in_the_browser(page, app_url, teacher_dir, student_dir, corpus_files):
    """Set up's Study panel queues a grid over α with its shared CE-only baseline; the Studies tab follows it
    to the end and shows its table, verdict and plots."""
    fill_form(page, teacher_dir, student_dir, corpus_files[0], alpha="0.5", run_name="not-used-by-a-study")
    page.get_by_text("Study: many runs from this form").click()
    page.locator("#study-name textarea, #study-name input").first.fill("browser-study")
    page.locator("#study-grid textarea").fill("loss.alpha: [0.0, 0.5]")
    page.locator("#study-seeds textarea, #study-seeds input").first.fill("1")
    page.locator("#study-launch").click()
    wait_for_text(page, "#study-launch-message", "browser-study launched")
    expect(page.locator("#study-launch-message")).to_contain_text("2 runs and 1 CE-only baselines")
    page.get_by_role("tab", name="Studies").click()
    deadline = time.time() + 900  # three runs one after another, each evaluated at its end
    while "3 succeeded" not in (page.locator("#study-status").inner_text() or ""):
        assert time.time() < deadline, page.locator("#study-status").inner_text()
        page.locator("#studies-refresh").click()
        time.sleep(2)
    wait_for_text(page, "#study-verdict", "Did distillation beat plain fine-tuning?")
    expect(page.locator("#study-table")).to_contain_text("gain_pct")
    page.wait_for_function("document.querySelectorAll('#study-clock .scatterlayer .trace').length == 3")
    page.screenshot(path=SHOTS / "6b-study.png", full_page=True)


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


def test_learn_shows_the_default_teacher_before_any_run(page, app_url):
    """The Learn tab on the offline default, no run needed: the storage plot is there before anything is read;
    a sentence read, a token clicked and T moved each update the view, and moving T runs no model."""
    page.get_by_role("tab", name="Learn").click()
    expect(page.locator("#learn-storage-note")).to_contain_text("= 130 bytes")
    page.get_by_role("button", name="Read it with the teacher and the student").click()
    wait_for_text(page, "#learn-status", "both models ran once")
    page.locator("#learn-tokens .token").nth(3).click()  # the prediction of token 3 is position 2
    wait_for_text(page, "#learn-labels-note", "Position 2")
    temperature = page.locator("#learn-temperature input[type=number]")
    temperature.fill("8")
    temperature.press("Enter")
    wait_for_text(page, "#learn-labels-note", "At T = 8")
    expect(page.locator("#learn-status")).to_contain_text("no model ran")
    page.screenshot(path=SHOTS / "0-learn.png", full_page=True)
