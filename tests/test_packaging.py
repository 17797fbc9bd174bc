"""The wheels a user installs: built from a clean clone, installed into a fresh venv, used there.

Everything stays offline and quick: the wheels are built with ``--no-build-isolation`` (setuptools
from the test extras), and the fresh venv (no ``--system-site-packages``) sees the dependencies
already installed in ``.venv`` through a folder of symlinks named in a ``.pth`` file, so pip resolves
ckptcore's declared dependencies against them with ``--no-index`` and downloads nothing.
"""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ("ckptcore-torch", "ckptcore-tf")
TIMEOUT = 240  # seconds for any one command: a hang fails the test instead of the suite

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> str:
    full_env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1", "PYTHONNOUSERSITE": "1",
                **(env or {})}
    full_env.pop("PYTHONPATH", None)
    r = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def _readme_example(directory: Path) -> str:
    """The README's first Python block (the five lines that save and restore), writing under ``directory``."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"```python\n(.*?)```", text, re.S)
    assert m, "README.md has no ```python block"
    assert '"/tmp/run' in m.group(1), "the README example saves under /tmp/run"
    return m.group(1).replace('"/tmp/run', '"' + str(directory))


def _closure(names: list[str]) -> list[metadata.Distribution]:
    """The installed distributions ``names`` need at run time (their non-extra requirements, recursively)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        req = Requirement(todo.pop())
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        if key in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        dist = metadata.distribution(req.name)
        seen[key] = dist
        todo.extend(dist.requires or ())
    return list(seen.values())


def _link_installed(dists: list[metadata.Distribution], into: Path) -> None:
    """Symlink each distribution's top-level files and its metadata folder into ``into``."""
    into.mkdir()
    for dist in dists:
        base = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or () if not str(f).startswith("..")}
        for top in tops:
            src, dst = base / top, into / top
            if src.exists() and not dst.exists() and not top.endswith(".pth") and top != "__pycache__":
                dst.symlink_to(src)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Wheels from a clone of this checkout's HEAD, and a fresh venv with them installed."""
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip(f"{ROOT} is not a git checkout: wheels are built from a clean clone of HEAD")
    tmp = tmp_path_factory.mktemp("packaging")
    src, wheels, env = tmp / "src", tmp / "wheels", tmp / "venv"
    head = _run(["git", "-C", str(ROOT), "rev-parse", "HEAD"]).strip()
    _run(["git", "clone", "-q", "--no-checkout", str(ROOT), str(src)])
    _run(["git", "-C", str(src), "checkout", "-q", head])
    projects = [src] + [src / "plugins" / p for p in PLUGINS]
    build_log = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                      "-w", str(wheels), *map(str, projects)])

    _run([sys.executable, "-m", "venv", "--without-pip", str(env)])
    py = env / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    project = tomllib.loads((src / "pyproject.toml").read_text())["project"]
    cli_deps = project.get("optional-dependencies", {}).get("cli", [])  # the CLI's extra, once there is one
    # torch for the torch plugin's wheel, pytest for the conformance kit (ckptcore.testing is a pytest kit)
    _link_installed(_closure([*project["dependencies"], *cli_deps, "torch", "pytest"]), tmp / "deps")
    (site / "_ckptcore_test_deps.pth").write_text(str(tmp / "deps") + "\n")
    # With dependencies: pip finds numpy, torch, ... in the linked folder and must not need an index.
    core = "ckptcore[cli]" if cli_deps else "ckptcore"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-index", "--find-links",
          str(wheels), core, *PLUGINS])
    return {"wheels": wheels, "python": py, "env": env, "site": site, "src": src, "build_log": build_log}


def test_building_the_wheels_prints_no_deprecation_warning(built):
    # setuptools prints its BuildBackendWarning/SetuptoolsDeprecationWarning lines even with -q (a
    # `tool.setuptools.license-files` table, say); `make venv` builds the same projects
    assert "deprecat" not in built["build_log"].lower(), built["build_log"]


def _wheel(built, dist: str) -> zipfile.ZipFile:
    (path,) = built["wheels"].glob(dist.replace("-", "_") + "-*.whl")
    return zipfile.ZipFile(path)


def _metadata_of(zf: zipfile.ZipFile):
    (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
    return email.parser.Parser().parsestr(zf.read(name).decode())


@pytest.mark.parametrize("dist, package", [("ckptcore", "ckptcore"), ("ckptcore-torch", "ckptcore_torch"),
                                           ("ckptcore-tf", "ckptcore_tf")])
def test_every_wheel_is_typed_and_licensed(built, dist, package):
    zf = _wheel(built, dist)
    names = zf.namelist()
    assert f"{package}/py.typed" in names, "mypy users need the py.typed marker (PEP 561)"
    (lic,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert zf.read(lic) == (ROOT / "LICENSE").read_bytes()
    meta = _metadata_of(zf)
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["Version"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert "Typing :: Typed" in meta.get_all("Classifier")
    if dist != "ckptcore":  # a plugin is written against one minor series of the core
        (core,) = [Requirement(r) for r in meta.get_all("Requires-Dist") if Requirement(r).name == "ckptcore"]
        assert core.specifier.contains("0.1.0") and not core.specifier.contains("1.0.0")


def test_core_wheel_ships_the_conformance_kit(built):
    names = _wheel(built, "ckptcore").namelist()
    for f in ("ckptcore/testing/__init__.py", "ckptcore/testing/_kit.py", "ckptcore/testing/pytest_plugin.py"):
        assert f in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "examples/", "plugins/"))]


def test_core_wheel_ships_the_compiled_helpers_and_their_stubs(built):
    # the restore planner and the save walk, compiled (this machine has a compiler), each with its .pyi
    names = _wheel(built, "ckptcore").namelist()
    for mod in ("ckptcore/restore/_plan_fast", "ckptcore/save/_save_fast"):
        assert [n for n in names if n.startswith(mod + ".") and n.endswith((".so", ".pyd"))], mod
        assert mod + ".pyi" in names


def test_plugin_licenses_are_the_repository_license():
    for p in PLUGINS:
        assert (ROOT / "plugins" / p / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()


def test_fresh_venv_runs_the_readme_example(built, tmp_path):
    code = _readme_example(tmp_path / "run")
    check = (
        "import ckptcore, ckptcore.testing, sys\n"
        f"assert ckptcore.__file__.startswith({str(built['site'])!r}), ckptcore.__file__\n"
        "print('version', ckptcore.__version__)\n"
    )
    out = _run([str(built["python"]), "-c", check + code], cwd=tmp_path)
    assert "version 0.1.0" in out
    assert (tmp_path / "run" / "ckpt-1.index").exists()


def test_fresh_venv_finds_the_torch_plugin(built, tmp_path):
    code = (
        "import torch, ckptcore as ck\n"
        "net = torch.nn.Linear(2, 1)\n"
        f"path = ck.Checkpoint(model=net).save({str(tmp_path / 'ckpt')!r})\n"
        "fresh = torch.nn.Linear(2, 1)\n"
        "ck.Checkpoint(model=fresh).restore(path).assert_consumed()\n"
        "assert torch.equal(net.weight, fresh.weight)\n"
        "import ckptcore_torch; print('plugin', ckptcore_torch.__file__)\n"
    )
    out = _run([str(built["python"]), "-c", code], cwd=tmp_path)
    assert f"plugin {built['site']}" in out


def test_mypy_reads_the_installed_types(built, tmp_path):
    """A user's mypy, with no ignore_missing_imports, type-checks against the installed wheel."""
    (tmp_path / "use.py").write_text(
        "import ckptcore as ck\n"
        "status = ck.Checkpoint().restore(ck.latest_checkpoint('/nowhere'))\n"
        "reveal_type(status.assert_consumed())\n"
        "reveal_type(ck.latest_checkpoint('/nowhere'))\n")
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent)) or "mypy"
    r = subprocess.run([mypy, "--no-incremental", "--python-executable", str(built["python"]),
                        "--config-file", os.devnull, "use.py"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert "py.typed" not in r.stdout and "missing library stubs" not in r.stdout, r.stdout
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'Revealed type is "ckptcore.restore.status.LoadStatus"' in r.stdout
    assert re.search(r'Revealed type is "(builtins\.)?str \| None"', r.stdout), r.stdout


def test_wheel_cli_inspects_the_readme_checkpoint(built, tmp_path):
    entry_points = _wheel(built, "ckptcore").read(
        next(n for n in _wheel(built, "ckptcore").namelist() if n.endswith(".dist-info/entry_points.txt"))).decode()
    if "[console_scripts]" not in entry_points or re.search(r"^ckptcore\s*=", entry_points, re.M) is None:
        pytest.skip("the ckptcore console script is not on this branch yet (issue 14's CLI part)")
    code = _readme_example(tmp_path / "run")
    _run([str(built["python"]), "-c", code], cwd=tmp_path)
    cli = built["env"] / "bin" / "ckptcore"
    out = _run([str(cli), "inspect", str(tmp_path / "run" / "ckpt-1")], cwd=tmp_path)
    assert "model" in out and "w" in out


def test_source_checkout_version_falls_back():
    from ckptcore import _version

    assert _version.version_of("ckptcore") == metadata.version("ckptcore")
    assert _version.version_of("surely-not-installed-ckptcore-x") == _version.UNKNOWN
