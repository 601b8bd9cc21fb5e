"""app.py launches a page on 127.0.0.1, and the config tab's checker names bad fields."""
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from jobs.launcher import free_port
from workbench.ui.config_tab import check_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_app_launches_and_serves_the_page(tmp_path, defaults_root):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--runs-dir", str(tmp_path / "runs"),
                             "--cache-dir", str(defaults_root.parent)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, page = time.time() + 90, None
        while time.time() < deadline and proc.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert page is not None, proc.stdout.read() if proc.poll() is not None else "no answer in 90 s"
        assert "Distill Workbench" in page
        assert (tmp_path / "runs" / "workbench.duckdb").is_file()  # the store and its ingest thread are up
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_default_bind_is_loopback_only(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import app
    args = app.parse_args([])
    assert args.host == "127.0.0.1" and args.share is False and args.auth is None


def test_auth_flag_must_be_user_colon_pass():
    out = subprocess.run([sys.executable, "app.py", "--auth", "nocolon"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode == 2 and "USER:PASS" in out.stderr


def test_check_config_names_bad_fields_and_resolves_good_ones():
    good = {"teacher": {"name_or_path": "gpt2"}, "student": {"name_or_path": "distilgpt2"},
            "data": {"source": "c.txt"}}
    verdict, resolved = check_config(yaml.safe_dump(good))
    assert verdict.startswith("**Valid.**") and yaml.safe_load(resolved)["loss"]["alpha"] == 0.5
    verdict, resolved = check_config(yaml.safe_dump({**good, "loss": {"alpha": 2, "temperature": -1}}))
    assert "**loss.alpha**" in verdict and "**loss.temperature**" in verdict and resolved == ""
    verdict, _ = check_config("teacher: [")
    assert "Not valid YAML" in verdict


def test_example_config_shipped_in_assets_is_valid():
    verdict, _ = check_config((ROOT / "assets" / "configs" / "example.yaml").read_text())
    assert verdict.startswith("**Valid.**")
