"""A day with the workbench in a real browser: launch, watch, cancel, resume behind a queue, add the CE-only
baseline, reorder the queue, compare (no verdict until both runs finished, then the numbers), clone a run
into Set up, delete a run after confirming. Buttons are enabled only where the run's state allows."""
import json
import re

from browser import SHOTS, app_url, fill_form, page, wait_for_text  # noqa: F401 (fixtures)
from playwright.sync_api import Page, expect

ROW_STATE = """([id, wanted]) => {
  for (const row of document.querySelectorAll('#jobs-table .virtual-row')) {
    const cells = [...row.querySelectorAll('[role=gridcell]')].map(td => td.innerText.trim());
    if (cells[0] === id) return cells[3].startsWith(wanted);
  }
  return false;
}"""


def wait_state(page: Page, run_id: str, state: str) -> None:
    """Wait until the Runs table shows `run_id` in a state starting with `state` ("queued (#2)", "running")."""
    page.wait_for_function(ROW_STATE, arg=[run_id, state], timeout=300_000)


def choose_run(page: Page, run_id: str) -> None:
    page.locator("#runs-run input").click()
    page.get_by_role("option", name=run_id, exact=True).click()
    expect(page.locator("#runs-run input")).to_have_value(run_id)


def launch(page: Page, teacher_dir, student_dir, corpus, name: str, steps: str, alpha: str = "0.3") -> None:
    fill_form(page, teacher_dir, student_dir, corpus, alpha=alpha, run_name=name)
    page.locator("#setup-train-max_steps input").fill(steps)
    page.get_by_role("button", name="Launch").click()
    wait_for_text(page, "#setup-verdict", f"Launched {name}")


def test_launch_watch_cancel_resume_baseline_compare_clone_delete(page, app_url, teacher_dir, student_dir,
                                                                   corpus_files):
    _, runs = app_url
    corpus = corpus_files[0]
    launch(page, teacher_dir, student_dir, corpus, "daily", "3000")  # ~1 min of tiny steps: time to cancel

    # Watch it, then cancel: only Cancel is offered while it trains, only Resume and Delete once cancelled.
    page.get_by_role("tab", name="Runs").click()
    wait_state(page, "daily", "running")
    choose_run(page, "daily")
    expect(page.locator("#worker-log textarea")).to_have_value(re.compile(r"step \d+/3000"))
    expect(page.locator("#runs-cancel")).to_be_enabled()
    expect(page.locator("#runs-resume")).to_be_disabled()
    expect(page.locator("#runs-delete")).to_be_disabled()
    page.locator("#runs-cancel").click()
    wait_state(page, "daily", "cancelled")
    expect(page.locator("#runs-resume")).to_be_enabled()
    expect(page.locator("#runs-cancel")).to_be_disabled()
    expect(page.locator("#runs-delete")).to_be_enabled()
    page.screenshot(path=SHOTS / "10-cancelled.png", full_page=True)

    # A long run takes the one training slot: the resumed run and the baseline wait in the queue.
    launch(page, teacher_dir, student_dir, corpus, "blocker", "100000")
    page.get_by_role("tab", name="Runs").click()
    wait_state(page, "blocker", "running")
    choose_run(page, "daily")
    expect(page.locator("#runs-resume")).to_be_enabled()
    page.locator("#runs-resume").click()
    wait_state(page, "daily", "queued (#1)")

    page.get_by_role("tab", name="Evaluate").click()
    page.locator("#evaluate-run input").click()
    page.get_by_role("option", name="daily", exact=True).click()
    page.locator("#evaluate-baseline").click()
    wait_for_text(page, "#evaluate-baseline-message", "Queued daily-ce-baseline")
    page.wait_for_timeout(3000)  # two polls later the message is still there (it has its own place)
    expect(page.locator("#evaluate-baseline-message")).to_contain_text("Queued daily-ce-baseline")

    page.get_by_role("tab", name="Runs").click()
    wait_state(page, "daily-ce-baseline", "queued (#2)")
    choose_run(page, "daily-ce-baseline")
    expect(page.locator("#runs-down")).to_be_disabled()  # already last
    page.locator("#runs-up").click()
    wait_state(page, "daily-ce-baseline", "queued (#1)")
    wait_state(page, "daily", "queued (#2)")

    # Compare before the baseline has run: no verdict, and why.
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-runs input").click()
    page.get_by_role("option", name="daily", exact=True).click()
    wait_for_text(page, "#compare-verdict", "no verdict yet")
    expect(page.locator("#compare-verdict")).to_contain_text("baseline still queued")
    expect(page.locator("#compare-verdict")).not_to_contain_text("Yes.")
    page.screenshot(path=SHOTS / "11-compare-waiting.png", full_page=True)

    # Free the slot: the baseline runs first (moved up), then daily resumes from its checkpoint.
    page.get_by_role("tab", name="Runs").click()
    choose_run(page, "blocker")
    page.locator("#runs-cancel").click()
    wait_state(page, "daily-ce-baseline", "succeeded")
    choose_run(page, "daily")
    wait_state(page, "daily", "running")
    expect(page.locator("#worker-log textarea")).to_have_value(re.compile(r"resumed from checkpoint \d+"))
    wait_state(page, "daily", "succeeded")
    page.wait_for_timeout(2500)  # a poll after the last lines: the log box shows its end, not where it began
    assert page.evaluate("() => { const b = document.querySelector('#worker-log textarea'); "
                         "return b.scrollHeight > b.clientHeight && b.scrollTop + b.clientHeight >= b.scrollHeight - 40; }")
    page.screenshot(path=SHOTS / "12-runs.png", full_page=True)

    page.get_by_role("tab", name="Compare").click()
    page.get_by_role("tab", name="Runs").click()
    page.get_by_role("tab", name="Compare").click()  # a tab switch redraws the comparison of the chosen runs
    page.locator("#compare-runs input").click()
    page.get_by_role("option", name="daily-ce-baseline", exact=True).click()
    page.wait_for_function("/\\*\\*(Yes|No)\\.\\*\\*|(Yes|No)\\./.test(document.querySelector('#compare-verdict')"
                           "?.innerText ?? '')")
    expect(page.locator("#compare-verdict")).to_contain_text("final held-out numbers of both finished runs")
    page.screenshot(path=SHOTS / "13-compare-verdict.png", full_page=True)

    # Clone daily into Set up: its knobs come back in the form.
    page.get_by_role("tab", name="Runs").click()
    choose_run(page, "daily")
    page.locator("#runs-config").get_by_text("Config", exact=True).click()
    page.locator("#runs-clone").click()
    expect(page.get_by_role("tab", name="Set up")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#setup-loss-alpha input")).to_have_value("0.3")
    expect(page.locator("#setup-train-max_steps input")).to_have_value("3000")

    # Delete the cancelled blocker: refused without the confirmation, gone with it.
    page.get_by_role("tab", name="Runs").click()
    choose_run(page, "blocker")
    page.locator("#runs-delete").click()
    wait_for_text(page, "#runs-message", "tick the confirmation")
    assert (runs / "blocker").exists()
    page.locator("#runs-confirm input").check()
    page.locator("#runs-delete").click()
    wait_for_text(page, "#runs-message", "deleted")
    page.wait_for_function("![...document.querySelectorAll('#jobs-table .virtual-row [role=gridcell]:first-child')]"
                           ".some(td => td.innerText.trim() === 'blocker')")
    assert not (runs / "blocker").exists()
    page.wait_for_timeout(4500)  # two polls after the deletion: the picker held the deleted run meanwhile
    expect(page.get_by_text("not in the list of choices")).to_have_count(0)  # no Gradio error toast
    assert json.loads((runs / "daily" / "status.json").read_text())["state"] == "succeeded"
    page.screenshot(path=SHOTS / "14-deleted.png", full_page=True)
