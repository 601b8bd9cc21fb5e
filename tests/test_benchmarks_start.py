"""benchmarks/gpu.py starts and says what it measured: its smoke mode (tiny random models, any machine, no
offline default) prints the JSON a GPU run prints, each part naming its scale, and without CUDA it says
that peak memory was skipped rather than printing a number it did not measure. No timing is asserted."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MODES = {"training": {"plain", "fused", "cached_plain", "cached_fused"}, "loss": {"plain", "fused"}}


@pytest.mark.slow
def test_the_gpu_benchmark_starts_and_reports_every_part(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result  # stdout is the JSON alone
    assert result["smoke"] is True and {"device", "torch", "training", "loss"} <= set(result)
    for part, modes in MODES.items():
        assert set(result[part]["modes"]) == modes and result[part]["scale"].startswith("smoke")
        for mode in result[part]["modes"].values():
            assert {"min", "median", "max", "n"} == set(mode["step_s"]) and mode["tokens_per_s"] > 0
            if not torch.cuda.is_available():
                assert mode["peak_memory_mib"] == "skipped: needs CUDA"
        assert "fused_over_plain_time" in result[part]["ratios"]
    assert result["training"]["cache"]["blocks"] == result["training"]["steps"] * result["training"]["batch"]
    assert result["loss"]["liger_kernel_published_h100"]["peak_gb"] == {"liger": 11.1, "torch": 68.9}
