"""Shared test fixtures: parity fixture paths, tiny random configs, and a plugin-free Python subprocess."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One thread: tiny models gain nothing from more, and on a shared 2-core machine OpenMP spinning slows them 10-100x.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SRC_DIR = REPO_ROOT / "src"
# Recorded from the original release code; committed with the tests (see tests/data/parity/README.md).
PARITY_DIR = REPO_ROOT / "tests" / "data" / "parity"


def pytest_configure(config):
    # Markers transformers' common test suites put on their tests (test_upstream_*.py); transformers registers them in
    # its own repository's conftest, which is not part of the suites we fetch.
    for marker in ("accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test",
                   "torch_compile_test"):
        config.addinivalue_line("markers", f"{marker}: set by transformers' common tests")


def require_parity_dir() -> Path:
    """PARITY_DIR, or a test failure: the fixtures are part of the repository, so their absence is a broken checkout
    that must show up red, not as quietly skipped parity tests."""
    if not (PARITY_DIR / "manifest.json").is_file():
        pytest.fail(f"parity fixtures missing at {PARITY_DIR} (they are committed with the tests: check the checkout)",
                    pytrace=False)
    return PARITY_DIR


def tiny_config_kwargs(**overrides):
    """A small LLaDA2 MoE config (2 dense-free-ish layers, 8 experts) used across the unit tests."""
    kwargs = dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=48,
        moe_intermediate_size=8,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        first_k_dense_replace=1,
        num_experts=8,
        num_experts_per_tok=2,
        num_shared_experts=1,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=2.5,
        max_position_embeddings=1024,
        mask_token_id=127,
        eos_token_id=126,
        pad_token_id=126,
        bos_token_id=125,
    )
    kwargs.update(overrides)
    return kwargs


def offline_env() -> dict:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.fixture(scope="session")
def parity_checkpoint():
    """The tiny model in the original release layout (tests/data/parity/checkpoint)."""
    return require_parity_dir() / "checkpoint"


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """The public parity checkpoint converted with the command-line script, as a user would (once per session)."""
    require_parity_dir()
    output = tmp_path_factory.mktemp("parity") / "llada2-uni-converted"
    result = subprocess.run(
        [sys.executable, "conversion/convert_llada2_uni_to_hf.py", "--original", str(PARITY_DIR / "checkpoint"),
         "--output", str(output)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=offline_env(),
    )
    assert result.returncode == 0, f"conversion failed:\n{result.stdout}\n{result.stderr}"
    return output


@torch.no_grad()
def randomize_expert_bias(model, std=0.1):
    """Non-zero router biases (the releases may carry them), so tests see them steer expert selection."""
    for layer in model.model.layers:
        if layer.is_moe:
            layer.mlp.gate.expert_bias.normal_(0.0, std)
    return model


@pytest.fixture
def parity_dir():
    return require_parity_dir()


# Prepended to every script run by `run_without_plugin`: drop every route to this repo's `src/` so that only the
# remote code inside a saved folder can provide the classes.
_SANITIZE = textwrap.dedent(
    f"""
    import sys
    _src = {str(SRC_DIR)!r}
    sys.path[:] = [p for p in sys.path if p and not p.startswith(_src)]
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
    try:
        import transformers_llada_uni  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("transformers_llada_uni is still importable: the plugin-free check is void")
    """
)


def run_without_plugin(script: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `script` in a fresh interpreter where `transformers_llada_uni` cannot be imported; fail on non-zero exit."""
    env = {k: v for k, v in offline_env().items() if k != "PYTHONPATH"}
    code = _SANITIZE + textwrap.dedent(script)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout, cwd="/"
    )
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result
