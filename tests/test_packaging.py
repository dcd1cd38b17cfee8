"""Release packaging: the sdist and the wheel that ``python -m build`` makes.

The wheel and the sdist are built once per session (``python -m build``, with build
isolation, so ``[build-system]`` in pyproject.toml is what is tested). Then:

- ``twine check --strict`` passes on both (the README renders on PyPI);
- the wheel holds the package, ``py.typed`` and the twistd plugin module, and no
  ``twisted/__init__.py``, ``twisted/plugins/__init__.py`` or ``dropin.cache`` (either would
  break or shadow Twisted's own files); its metadata names the version of
  ``txpika/__init__.py``, ``Requires-Python``, the Twisted floor and the extras;
- the sdist carries what it takes to run the tests and build the docs, nothing generated;
- the wheel installs into a fresh virtualenv outside the checkout (no system site-packages;
  pip fetches Twisted by name), where ``import txpika`` works from site-packages and
  ``twistd --help`` lists the ``txpika`` plugin; Twisted's plugin cache is then regenerated
  with txpika's plugin in it, and a second run reads it without complaint;
- every news fragment has a name towncrier accepts.

These tests need no broker; the install needs the package index pip is configured with.
"""

from __future__ import annotations

import ast
import email.parser
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _version_in_source() -> str:
    tree = ast.parse((ROOT / "txpika" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets
        ):
            assert isinstance(node.value, ast.Constant)
            return str(node.value.value)
    raise AssertionError("txpika/__init__.py assigns no __version__")


def _clean_env() -> dict[str, str]:
    """The environment without anything that would put the checkout on sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (
        f"{args} exited with {result.returncode}\n"
        f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    )
    return result


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel, built once (the wheel from the sdist, as ``build`` does)."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], out, 180)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


@pytest.fixture(scope="session")
def installed(dist: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv, outside the checkout, with the wheel installed; its bin dir."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], venv.parent, 60)
    # --no-compile: the test imports little, so byte-compiling all of Twisted is wasted time.
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile"]
    _run([*pip, str(dist["wheel"])], venv.parent, 150)
    return venv / "bin"


def test_twine_check_is_clean(dist: dict[str, Path]) -> None:
    files = [str(dist["sdist"]), str(dist["wheel"])]
    result = _run([sys.executable, "-m", "twine", "check", "--strict", *files], ROOT, 60)
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_wheel_contents_and_metadata(dist: dict[str, Path]) -> None:
    version = _version_in_source()
    assert dist["wheel"].name == f"txpika-{version}-py3-none-any.whl"
    with zipfile.ZipFile(dist["wheel"]) as whl:
        names = set(whl.namelist())
        metadata = whl.read(f"txpika-{version}.dist-info/METADATA").decode()
    assert "twisted/plugins/txpika_plugin.py" in names
    assert {"txpika/__init__.py", "txpika/py.typed", "txpika/blocking/__init__.py"} <= names
    assert "txpika/testing/__init__.py" in names
    forbidden = {"twisted/__init__.py", "twisted/plugins/__init__.py"}
    assert not names & forbidden
    assert not [n for n in names if n.endswith(("dropin.cache", ".pyc"))]
    assert not [n for n in names if n.startswith(("tests/", "examples/", "docs/"))]
    twisted_files = sorted(n for n in names if n.startswith("twisted/"))
    assert twisted_files == ["twisted/plugins/txpika_plugin.py"]

    meta = email.parser.Parser().parsestr(metadata)
    assert meta["Name"] == "txpika"
    assert meta["Version"] == version
    assert meta["Requires-Python"] == ">=3.11"
    requires = meta.get_all("Requires-Dist") or []
    floor = _twisted_floor()
    assert f"Twisted>={floor}" in requires
    assert "zope.interface" in requires
    # Only Twisted and zope.interface unconditionally; the rest behind extras.
    assert all(r.startswith(("Twisted", "zope.interface")) or "extra ==" in r for r in requires)
    assert {"tls", "test"} <= set(meta.get_all("Provides-Extra") or [])
    assert meta["Description-Content-Type"] == "text/x-rst"
    labels = {url.split(",")[0] for url in meta.get_all("Project-URL") or []}
    assert {"Documentation", "Source", "Issues", "Changelog"} <= labels
    classifiers = set(meta.get_all("Classifier") or [])
    assert "Framework :: Twisted" in classifiers
    assert "Typing :: Typed" in classifiers


def test_sdist_carries_tests_and_docs_but_nothing_generated(dist: dict[str, Path]) -> None:
    version = _version_in_source()
    with tarfile.open(dist["sdist"]) as sdist:
        prefix = f"txpika-{version}/"
        names = {n.removeprefix(prefix) for n in sdist.getnames()}
    for needed in (
        "CHANGELOG.rst",
        "MANIFEST.in",
        "LICENSE",
        "tests/conftest.py",
        "tests/rabbitnode.py",
        "examples/demo.py",
        "docs/conf.py",
        "docs/index.rst",
        "scripts/test",
        "scripts/docs",
        "spec/amqp-rabbitmq-0.9.1.json",
        "twisted/plugins/txpika_plugin.py",
    ):
        assert needed in names, needed
    assert not [n for n in names if "dropin.cache" in n or "_trial_temp" in n]
    assert not [n for n in names if "__pycache__" in n or n.startswith("docs/_build")]
    assert "twisted/plugins/__init__.py" not in names


def test_wheel_installs_into_a_fresh_virtualenv(installed: Path, tmp_path: Path) -> None:
    python = str(installed / "python")
    probe = (
        "import sys, txpika, txpika.blocking, txpika.testing\n"
        "print(txpika.__version__)\n"
        "print(txpika.__file__)\n"
    )
    out = _run([python, "-c", probe], tmp_path, 60).stdout.splitlines()
    assert out[0] == _version_in_source()
    module = Path(out[1]).resolve()
    assert module.is_relative_to(installed.parent.resolve()), module
    assert not module.is_relative_to(ROOT)
    # The installed Twisted's own plugins package, not a copy of ours.
    site = module.parent.parent
    plugins = site / "twisted" / "plugins"
    assert (plugins / "txpika_plugin.py").is_file()
    assert (plugins / "__init__.py").is_file()  # Twisted's, untouched
    assert "txpika" not in (plugins / "__init__.py").read_text()


def test_twistd_lists_the_plugin_and_the_cache_is_regenerated(
    installed: Path, tmp_path: Path
) -> None:
    twistd = str(installed / "twistd")
    first = _run([twistd, "--help"], tmp_path, 60)
    listed = re.search(r"^\s+txpika\s+Consume an AMQP queue", first.stdout, re.MULTILINE)
    assert listed, first.stdout
    site = next((installed.parent / "lib").glob("python3*/site-packages"))
    cache = site / "twisted" / "plugins" / "dropin.cache"
    assert cache.is_file()
    assert b"txpika_plugin" in cache.read_bytes()
    # The second run reads the cache as it is: same listing, nothing to complain about.
    second = _run([twistd, "--help"], tmp_path, 60)
    assert second.stdout == first.stdout
    assert "Unable" not in second.stderr and "Traceback" not in second.stderr
    options = _run([twistd, "txpika", "--help"], tmp_path, 60)
    assert "--queue" in options.stdout and "--handler" in options.stdout


def _twisted_floor() -> str:
    text = (ROOT / "setup.cfg").read_text()
    match = re.search(r"^\s+Twisted>=([0-9.]+)\s*$", text, re.MULTILINE)
    assert match, "setup.cfg install_requires names no Twisted>= floor"
    return match.group(1)


@pytest.mark.timeout(10)
def test_news_fragments_have_names_towncrier_accepts() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["towncrier"]
    types = {t["directory"] for t in config["type"]}
    fragments = [p for p in (ROOT / config["directory"]).iterdir() if p.name != ".gitignore"]
    assert fragments, "no news fragment at all"
    for fragment in fragments:
        parts = fragment.name.split(".")
        assert len(parts) in (2, 3) and parts[0].isdigit() and parts[1] in types, fragment.name
        assert fragment.read_text().strip(), f"{fragment.name} is empty"
