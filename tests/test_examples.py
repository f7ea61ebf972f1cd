"""The README's main command: the demo checkpoint builds and generates through the plain Auto classes."""

import subprocess
import sys

from conftest import REPO_ROOT


def test_generate_text_demo_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "generate_text.py"), "--gen-length", "12", "--steps", "4"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "RANDOM weights" in result.stdout
    assert "12 tokens" in result.stdout
    assert (tmp_path / "demo-checkpoint" / "modeling_llada2_moe.py").exists()


def test_generate_text_rejects_missing_model(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "generate_text.py"), "--model", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "--model" in result.stderr and "config.json" in result.stderr
