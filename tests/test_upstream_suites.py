"""The harness that runs transformers' common suites (upstream_suites.py, upstream_opt_outs.py): a suite that cannot be
fetched makes its tests fail with the reason, and an opt-out that names no test is an error."""

import subprocess
import sys
import textwrap
import unittest

import upstream_opt_outs
import upstream_suites
from conftest import REPO_ROOT, offline_env


def test_unreachable_index_fails_with_the_reason(tmp_path):
    """No cached copy and no package index: the tester classes get one test, and it fails saying why."""
    script = textwrap.dedent("""
        import unittest, upstream_suites
        (Mixin,) = upstream_suites.suite("test_modeling_common", "ModelTesterMixin")
        (Tester,) = upstream_suites.suite("test_configuration_common", "ConfigTester")
        class T(Mixin, unittest.TestCase):
            pass
        result = unittest.TextTestRunner(verbosity=0).run(unittest.defaultTestLoader.loadTestsFromTestCase(T))
        assert result.testsRun == 1 and len(result.failures) == 1, result
        message = result.failures[0][1]
        assert "common tests unavailable" in message and "pip" in message, message
        try:
            Tester(None)
        except AssertionError as error:
            assert "common tests unavailable" in str(error)
        else:
            raise SystemExit("the ConfigTester stand-in did not fail")
    """)
    env = dict(offline_env(), LLADA_UNI_CACHE=str(tmp_path), PIP_INDEX_URL="http://127.0.0.1:9/simple",
               PIP_NO_CACHE_DIR="1", PIP_RETRIES="0", PIP_TIMEOUT="2", PYTHONPATH=str(REPO_ROOT / "tests"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                            cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "transformers-tests" / upstream_suites.VERSION / "tests").exists()


def test_cached_suites_are_outside_the_source_tree():
    folder = upstream_suites.fetch()
    assert REPO_ROOT not in folder.parents
    assert all((folder / name).is_file() for name in upstream_suites.SUITE_FILES)


def test_an_opt_out_naming_no_test_fails(monkeypatch):
    class Probe(unittest.TestCase):
        def test_real(self):
            pass

    monkeypatch.setitem(upstream_opt_outs.OPT_OUTS, "probe", {"test_real": "a reason", "test_gone": "stale"})
    upstream_opt_outs.apply(Probe, "probe")
    result = unittest.TextTestRunner(verbosity=0).run(unittest.defaultTestLoader.loadTestsFromTestCase(Probe))
    assert len(result.skipped) == 1 and "opt-out: a reason" in result.skipped[0][1]
    assert len(result.failures) == 1 and "test_gone" in result.failures[0][1]
