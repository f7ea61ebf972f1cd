"""transformers' own common test suites, run on this project's classes the way upstream model tests run them.

The suites are not copied into this repository. transformers publishes its top-level common test files
(`tests/test_modeling_common.py`, `tests/test_configuration_common.py`, ...) in each release's source distribution,
so the one matching the installed release is fetched with pip at test time and cached outside the source tree
(`~/.cache/llada-uni/transformers-tests/<version>/`, or under `$LLADA_UNI_CACHE`). Hub access is not involved, so
this works with `HF_HUB_OFFLINE=1`. When the download fails the upstream tests fail with the reason (never skip).

The files are imported as the package `transformers_upstream_tests`: our own test folder is on `sys.path` too, and a
second top-level `tests` package or bare `test_*` modules would collide with it. The distribution does not ship the
modules those files import from the rest of transformers' repository (the export and generation test mixins, a dict
of config kwargs, a CI download helper); `STAND_INS` says what takes their place and why.
"""

import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
import types
import unittest
from pathlib import Path
from unittest.mock import patch

import transformers

PACKAGE = "transformers_upstream_tests"
SUITE_FILES = (
    "test_modeling_common.py",
    "test_configuration_common.py",
    "test_processing_common.py",
    "test_image_processing_common.py",
)
VERSION = transformers.__version__


class UpstreamSuitesUnavailable(RuntimeError):
    pass


def cache_dir(version: str = VERSION) -> Path:
    root = Path(os.environ.get("LLADA_UNI_CACHE", Path.home() / ".cache" / "llada-uni"))
    return root / "transformers-tests" / version / "tests"


def fetch(version: str = VERSION) -> Path:
    """The folder holding the release's top-level test files, downloading the sdist on first use."""
    target = cache_dir(version)
    if all((target / name).is_file() for name in (*SUITE_FILES, "__init__.py")):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
                   "--disable-pip-version-check", "--dest", tmp, f"transformers=={version}"]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise UpstreamSuitesUnavailable(f"`{' '.join(command)}` did not run: {error}") from error
        archives = sorted(Path(tmp).glob(f"transformers-{version}.tar.gz"))
        if result.returncode != 0 or not archives:
            raise UpstreamSuitesUnavailable(
                f"could not download the transformers {version} source distribution with pip (needed for "
                f"transformers' common tests):\n{result.stdout}{result.stderr}")
        staged = Path(tmp) / "tests"
        staged.mkdir()
        prefix = f"transformers-{version}/tests/"
        with tarfile.open(archives[0]) as archive:
            for member in archive.getmembers():
                name = member.name[len(prefix):] if member.name.startswith(prefix) else ""
                # only the top-level files: the suites and their siblings, no sub-folders, nothing but plain files
                if member.isfile() and name.endswith(".py") and "/" not in name:
                    (staged / name).write_bytes(archive.extractfile(member).read())
        # The repository's tests/ is a package (an empty __init__.py, which test_configuration_common.py executes
        # through `direct_transformers_import`); the distribution leaves that empty file out.
        (staged / "__init__.py").touch()
        missing = [name for name in SUITE_FILES if not (staged / name).is_file()]
        if missing:
            raise UpstreamSuitesUnavailable(f"the transformers {version} source distribution has no tests/{missing}")
        try:
            staged.rename(target)  # atomic: a concurrent run either sees the whole folder or none
        except OSError:
            if not all((target / name).is_file() for name in (*SUITE_FILES, "__init__.py")):
                raise
    return target


# Stand-ins for modules the suites import from parts of transformers' repository that the sdist does not ship.
def _config_common_kwargs() -> dict:
    # ConfigTester checks that every base-class argument given here lands on the config; these are generic
    # PreTrainedConfig arguments, each set away from its default (the check wants `dtype` float16).
    return {"return_dict": False, "output_hidden_states": True, "output_attentions": True, "dtype": "float16",
            "chunk_size_feed_forward": 5, "architectures": ["LLaDA2MoeForCausalLM"], "problem_type": "regression",
            "id2label": {0: "first", 1: "second"}, "label2id": {"first": 0, "second": 1}}


STAND_INS = {
    # ModelTesterMixin's base: the export tests live in tests/exporters/, not shipped; nothing of them runs here.
    f"{PACKAGE}.exporters.test_export": {"ExportTesterMixin": type("ExportTesterMixin", (), {})},
    # Only referenced as a marker class (testers of generating models inherit it); not shipped. Our testers do not
    # inherit it: the one test that asks for it is an opt-out (block diffusion is not GenerationMixin's search).
    f"{PACKAGE}.generation.test_utils": {"GenerationTesterMixin": type("GenerationTesterMixin", (), {})},
    f"{PACKAGE}.utils.test_configuration_utils": {"config_common_kwargs": _config_common_kwargs()},
    # Maps fixture URLs to files a CI job pre-downloads. Tests run offline here, so an image URL becomes a local
    # synthetic picture of the same name (any other URL is returned as is and fails the test that reads it).
    "fetch_hub_objects_for_ci": {"url_to_local_path": lambda url: _local_picture(url)},
}


def _local_picture(url: str) -> str:
    name = url.rsplit("/", 1)[-1]
    if not name.lower().endswith((".png", ".jpg", ".jpeg")):
        return url
    from PIL import Image

    path = cache_dir().parent / "pictures" / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        gradient = Image.linear_gradient("L").resize((96, 64))
        picture = Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT), gradient))
        staged = path.with_name(f".{name}.{os.getpid()}")
        picture.save(staged, format="PNG" if name.lower().endswith(".png") else "JPEG")
        staged.replace(path)
    return str(path)


def _install_package(folder: Path):
    if PACKAGE in sys.modules:
        return
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(folder)]
    package.__file__ = str(folder / "__init__.py")
    sys.modules[PACKAGE] = package
    for name, attributes in STAND_INS.items():
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            module_name = ".".join(parts[:depth])
            if module_name not in sys.modules:
                module = types.ModuleType(module_name)
                if depth < len(parts):
                    module.__path__ = []  # a package, so that the leaf can be imported below it
                sys.modules[module_name] = module
        vars(sys.modules[name]).update(attributes)


def register_as_native(test: unittest.TestCase, model_type: str, **mappings: str):
    """For the duration of `test`, list our classes in transformers' task-mapping tables, e.g.
    `MODEL_MAPPING_NAMES="LLaDA2MoeModel"`. The suites read these tables to decide what a class is (a base model is
    not trained, an LM head gets labels); a model in transformers itself is listed there, ours is not."""
    from transformers.models.auto import modeling_auto

    for table, class_name in mappings.items():
        patcher = patch.dict(getattr(modeling_auto, table), {model_type: class_name})
        patcher.start()
        test.addCleanup(patcher.stop)


def add_config_tests(test_class, config_tester_factory):
    """One test per ConfigTester check, `test_config_<check>`, instead of upstream's single `test_config` that runs them
    all in a row: a check can then be opted out by name without losing the ones after it.
    `config_tester_factory(test)` builds the ConfigTester for a test instance."""
    (config_tester,) = suite("test_configuration_common", "ConfigTester")
    checks = [name for name in vars(config_tester)
              if name.startswith(("create_and_test_config", "check_config_")) and callable(vars(config_tester)[name])]

    def make(check):
        def test(self):
            getattr(config_tester_factory(self), check)()
        return test

    for check in checks:
        short = check.removeprefix("create_and_test_config_").removeprefix("check_config_")
        setattr(test_class, f"test_config_{short}", make(check))
    return test_class


def load(name: str):
    """Import one of the suites (e.g. "test_modeling_common") from the cached release files."""
    _install_package(fetch())
    return importlib.import_module(f"{PACKAGE}.{name}")


def suite(module: str, *names: str):
    """The requested classes / functions of a suite module, or stand-ins that FAIL every test of a class built on
    them with the reason the suites could not be loaded (so a missing download is red, never skipped)."""
    try:
        loaded = load(module)
        return tuple(getattr(loaded, name) for name in names)
    except Exception as error:  # noqa: BLE001 - any failure to obtain the suites must surface as test failures
        reason = f"transformers {VERSION} common tests unavailable: {type(error).__name__}: {error}"
        return tuple(_unavailable(name, reason) for name in names)


def _unavailable(name: str, reason: str):
    def fail(*args, **kwargs):
        raise AssertionError(reason)

    if name.endswith("Mixin"):  # a test class built on it gets one test, and it fails with the reason
        return type(name, (), {"test_upstream_suite_available": fail})
    return type(name, (), {"__init__": fail})  # a helper class (testers subclass them): building one fails
