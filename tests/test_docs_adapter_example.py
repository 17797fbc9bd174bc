"""docs/adapters.md works as written: its code runs, and its plugin works when packaged.

Python blocks run in order in one namespace; a block preceded by
``<!-- file: NAME -->`` is saved as NAME in a project directory instead.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import tomllib

import ckptcore as ck
from ckptcore import hookspec, registry

pytest_plugins = ["pytester"]

DOC = Path(__file__).resolve().parent.parent / "docs" / "adapters.md"
FENCE = re.compile(r"(?:<!-- file: (?P<file>[\w./-]+) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)```", re.S)
PLUGIN_MODULE = "ckpt_stdarray"


class _TryMustRaise(ast.NodeTransformer):
    """Give each ``try``/``except`` of an example an ``else`` that fails: the page says it raises."""

    def visit_Try(self, node: ast.Try) -> ast.Try:
        self.generic_visit(node)
        if node.handlers and not node.orelse:
            msg = f"the try block at line {node.lineno} did not raise"
            node.orelse = [ast.parse(f"raise AssertionError({msg!r})").body[0]]
        return node


def run_block(code: str, namespace: dict, label: str) -> None:
    tree = ast.fix_missing_locations(_TryMustRaise().visit(ast.parse(code)))
    exec(compile(tree, label, "exec"), namespace)


def blocks(doc: Path = DOC):
    """(file name or None, language, code) for every fenced block of a page."""
    return [(m["file"], m["lang"], m["code"]) for m in FENCE.finditer(doc.read_text())]


def write_project(root: Path) -> dict:
    """Save the page's file blocks under ``root``; return the parsed pyproject."""
    files = {name: code for name, _, code in blocks() if name}
    assert {"pyproject.toml", f"{PLUGIN_MODULE}.py", "test_stdarray_conformance.py"} <= set(files)
    for name, code in files.items():
        (root / name).write_text(code)
    importlib.invalidate_caches()
    return tomllib.loads(files["pyproject.toml"])


def make_dist_info(root: Path, pyproject: dict) -> None:
    """What ``pip install`` would leave on sys.path for entry-point discovery."""
    project = pyproject["project"]
    info = root / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    eps = project["entry-points"]["ckptcore"]
    (info / "entry_points.txt").write_text("[ckptcore]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    importlib.invalidate_caches()


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = tmp_path / "project"
    root.mkdir()
    pyproject = write_project(root)
    monkeypatch.syspath_prepend(str(root))
    yield root, pyproject
    sys.modules.pop(PLUGIN_MODULE, None)


def test_every_python_block_of_the_page_runs(project, ckptcore_registry):
    code_blocks = [code for name, lang, code in blocks() if lang == "python" and not name]
    assert len(code_blocks) >= 10
    namespace: dict = {"__name__": "docs_adapters"}
    for i, code in enumerate(code_blocks):
        try:
            run_block(code, namespace, f"{DOC}:block{i}")
        except Exception as e:  # pragma: no cover - the message says which block failed
            raise AssertionError(f"code block {i} of docs/adapters.md failed:\n{code}") from e
    # The page's claims, checked after it ran: slots are keyed by both ends, adapters are named.
    keys = [k for k, _ in ck.list_variables(namespace["path"])]
    assert keys == ["c/w/.ATTRIBUTES/VARIABLE_VALUE"]
    assert registry.find_adapter(namespace["Particles"](1)).name == "particles.Particles"


def test_the_slot_key_named_on_the_page_is_the_real_one(project, ckptcore_registry):
    namespace: dict = {"__name__": "docs_adapters"}
    for name, lang, code in blocks():
        if lang == "python" and not name:
            run_block(code, namespace, str(DOC))
    path = ck.Checkpoint(model={"w": namespace["w"]}, opt=namespace["opt"]).write(f"{namespace['workdir']}/slot")
    slot_key = "model/w/.OPTIMIZER_SLOT/opt/momentum/.ATTRIBUTES/VARIABLE_VALUE"
    assert slot_key in DOC.read_text()
    assert slot_key in [k for k, _ in ck.list_variables(path)]


def test_the_packaged_plugin_is_found_through_its_entry_point(project, monkeypatch, ckptcore_fresh_registry):
    import array

    root, pyproject = project
    make_dist_info(root, pyproject)
    assert PLUGIN_MODULE not in sys.modules
    samples = array.array("f", [1.0, 2.0])
    path = ck.Checkpoint(samples=samples).write(str(root / "ckpt"))   # no import of the plugin anywhere
    into = array.array("f", [0.0, 0.0])
    ck.Checkpoint(samples=into).read(path).assert_consumed()
    assert into.tolist() == [1.0, 2.0]
    assert registry.find_adapter(samples).name == "ckpt_stdarray.array"
    assert registry.get_plugin_manager().get_plugin("stdarray") is sys.modules[PLUGIN_MODULE]

    monkeypatch.setenv("CKPTCORE_BLOCK_PLUGINS", "stdarray")          # blocked by its entry-point name
    registry._reset_for_tests()
    with pytest.raises(ck.NotTrackableError, match="samples"):
        ck.Checkpoint(samples=samples)


def test_the_conformance_example_on_the_page_passes(project, pytester, ckptcore_fresh_registry):
    root, pyproject = project
    make_dist_info(root, pyproject)
    pytester.makepyfile(test_stdarray_conformance=(root / "test_stdarray_conformance.py").read_text())
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider",
                                          "-W", "error::pytest.PytestUnknownMarkWarning")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, result.stdout.str()
    assert outcomes["passed"] >= 12


def test_the_plugin_pip_installs_and_loads_in_a_new_process(project, tmp_path):
    root, _ = project
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(target), str(root)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    check = textwrap.dedent("""
        import array, json, sys
        import ckptcore as ck
        a = array.array("d", [3.0])
        ck.Checkpoint(a=a)
        print(json.dumps({"adapter": ck.registry.find_adapter(a).name,
                          "imported_by_ckptcore": "ckpt_stdarray" in sys.modules}))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), *sys.path]))
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"adapter": "ckpt_stdarray.array", "imported_by_ckptcore": True}


def test_the_python_blocks_of_the_plugins_page_run(ckptcore_registry):
    namespace: dict = {"__name__": "docs_plugins"}
    code_blocks = [code for _, lang, code in blocks(DOC.with_name("plugins.md")) if lang == "python"]
    assert len(code_blocks) == 2
    for code in code_blocks:
        run_block(code, namespace, "plugins.md")


def _normalize(text: str) -> str:
    text = re.sub(r":\w+:", "", text).replace("`", "").replace("~", "")
    text = re.sub(r"\b(ckptcore|ck)\.", "", text)
    return " ".join(text.split())


@pytest.mark.parametrize("hook", ["ckptcore_register_adapters", "ckptcore_register_storage",
                                  "ckptcore_register_formats", "ckptcore_collective_group",
                                  "ckptcore_install_creation_hooks"])
def test_each_hook_is_documented_with_its_own_docstring(hook):
    doc = DOC.read_text()
    assert f"### `{hook}`" in doc
    section = doc.split(f"### `{hook}`", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    docstring = inspect.getdoc(getattr(hookspec, hook)).split("Example::")[0]
    for paragraph in filter(None, (p.strip() for p in docstring.split("\n\n"))):
        assert _normalize(paragraph) in _normalize(section), f"{hook}: docs lack {paragraph!r}"


def test_every_hook_in_the_hookspec_module_is_documented():
    declared = {n for n, f in vars(hookspec).items() if n.startswith("ckptcore_") and callable(f)}
    assert declared == {"ckptcore_register_adapters", "ckptcore_register_storage",
                        "ckptcore_register_formats", "ckptcore_collective_group", "ckptcore_install_creation_hooks"}


def test_the_hookspec_module_example_works(ckptcore_registry, tmp_path):
    example = hookspec.__doc__.split("::\n", 1)[1].split("\nand in its", 1)[0]
    module = types.ModuleType("mypkg_ckpt_plugin")
    exec(textwrap.dedent(example), module.__dict__)
    registry.register_plugin(module, name="point")
    p = module.Point()
    p.xy = [1.0, 2.0]
    path = ck.Checkpoint(p=p).write(str(tmp_path / "point"))
    q = module.Point()
    ck.Checkpoint(p=q).read(path).assert_consumed()
    assert q.xy == [1.0, 2.0]
    assert 'point = "mypkg.ckpt_plugin"' in hookspec.__doc__
