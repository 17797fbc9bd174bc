"""The documentation site builds, its examples run, and the API reference matches the code.

* ``mkdocs build --strict`` succeeds (broken links and missing nav pages fail it);
* every ``python`` code block of the tutorial pages runs, in order, one namespace per
  page (like a notebook), with ``/tmp/`` paths redirected into a temporary directory;
* every public name is documented in ``docs/api.md``, has a docstring with an example,
  and has a reference generated from the code there (mkdocstrings ``::: target`` blocks).
"""

from __future__ import annotations

import ast
import contextlib
import gc
import importlib
import inspect
import io
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from ckpt_samples import toy_optimizer

import ckptcore as ck

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Pages whose python blocks must run as written (the tutorial pages, and the examples of format.md and api.md).
RUNNABLE_PAGES = ["index.md", "getting-started.md", "concepts.md", "format.md", "api.md", "pictures.md"]

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<info>[^\n`]*)$")


def code_blocks(text: str) -> list[tuple[str, int, str]]:
    """``(info string, first line number, code)`` for every fenced block of a Markdown page."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, indent = m.group("fence"), m.group("info").strip(), m.group("indent")
        start = i + 1
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line)
            i += 1
        if i == len(lines):
            raise AssertionError(f"unclosed code fence opened at line {start}")
        blocks.append((info, start + 1, "\n".join(body) + "\n"))
        i += 1
    return blocks


def _lang(info: str) -> str:
    info = info.strip()
    if info.startswith("{"):
        classes = re.findall(r"\.([\w-]+)", info)
        return classes[0] if classes else ""
    return info.split()[0] if info else ""


class _ExpectRaise(ast.NodeTransformer):
    """Give every ``try: ... except ...:`` of an example an ``else`` that fails.

    Examples show failures as ``try: <call> except SomeError as e: print(e)``; if the call
    stopped failing, the page would describe behaviour the code no longer has.
    """

    def visit_Try(self, node: ast.Try) -> ast.Try:
        self.generic_visit(node)
        if node.handlers and not node.orelse:
            msg = f"the example expects the try block at line {node.lineno} of this code block to raise"
            node.orelse = [ast.Raise(exc=ast.Call(func=ast.Name("AssertionError", ast.Load()),
                                                  args=[ast.Constant(msg)], keywords=[]), cause=None)]
        return node


def compile_example(source: str, filename: str):
    tree = ast.fix_missing_locations(_ExpectRaise().visit(ast.parse(source, filename)))
    return compile(tree, filename, "exec")


def test_examples_must_raise_where_they_catch():
    ok = compile_example("try:\n    1 / 0\nexcept ZeroDivisionError:\n    pass\n", "ok")
    exec(ok, {})
    wrong = compile_example("try:\n    x = 1\nexcept ZeroDivisionError:\n    pass\n", "wrong")
    with pytest.raises(AssertionError, match="expects the try block"):
        exec(wrong, {})


def python_blocks(page: str) -> list[tuple[int, str]]:
    text = (DOCS / page).read_text(encoding="utf-8")
    return [(line, code) for info, line, code in code_blocks(text) if info.strip() == "python"]


def test_code_block_parser_finds_fences():
    text = "x\n```python\na = 1\n```\n\n```{.python .signature}\nck.f(a)\n```\n"
    assert code_blocks(text) == [("python", 3, "a = 1\n"), ("{.python .signature}", 7, "ck.f(a)\n")]
    assert _lang("{.python .signature}") == "python"


# -- (a) the site builds --------------------------------------------------------------------------------
def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    for page in ["index.html", "getting-started/index.html", "concepts/index.html", "format/index.html",
                 "api/index.html"]:
        assert (site / page).is_file(), page


def test_nav_lists_every_page():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r":\s*([\w./-]+\.md)\s*$", nav, flags=re.M))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages <= listed, f"pages missing from the nav in mkdocs.yml: {sorted(pages - listed)}"


# -- (b) examples run ----------------------------------------------------------------------------------
@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    blocks = python_blocks(page)
    assert blocks, f"{page} has no python examples"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.replace('.', '_').replace('-', '_')}"}
    tmp = str(tmp_path) + "/"
    with warnings.catch_warnings():
        # A partial restore in an example warns when its Checkpoint is collected; that is documented behaviour.
        warnings.simplefilter("ignore", ck.PartialRestoreWarning)
        for line, code in blocks:
            source = code.replace("/tmp/", tmp)
            try:
                compiled = compile_example(source, f"docs/{page}:{line}")
                with contextlib.redirect_stdout(io.StringIO()):
                    exec(compiled, namespace)
            except Exception as e:
                raise AssertionError(f"the python block at docs/{page} line {line} failed: "
                                     f"{type(e).__name__}: {e}\n{code}") from e
        namespace.clear()
        gc.collect()  # partial-restore warnings of the examples fire here, inside the filter


# -- (c) the API reference is complete and in step with the code ---------------------------------------
API_NAMES = sorted(set(ck.__all__) | {"CheckpointManager"})


def _api_text() -> str:
    return (DOCS / "api.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", API_NAMES)
def test_public_name_is_in_api_reference(name):
    assert re.search(rf"\bck\.{re.escape(name)}\b", _api_text()), f"ck.{name} is not documented in docs/api.md"


@pytest.mark.parametrize("name", API_NAMES)
def test_public_name_has_docstring_with_example(name):
    obj = getattr(ck, name)
    doc = obj.__doc__ if inspect.ismodule(obj) else inspect.getdoc(obj)
    assert doc, f"ck.{name} has no docstring"
    assert "Example" in doc or ">>>" in doc, f"the docstring of ck.{name} shows no example"


_DIRECTIVE = re.compile(r"^::: (?P<target>[\w.]+)[ \t]*\n(?P<options>(?:[ \t]+\S.*\n)*)", re.M)


def api_directives() -> list[tuple[str, list[str] | None]]:
    """``(target, members)`` of every mkdocstrings ``::: target`` block of api.md (``None``: every member)."""
    out = []
    for m in _DIRECTIVE.finditer(_api_text()):
        members = re.search(r"^\s+members:\s*(\[.*\]|false)\s*$", m.group("options"), re.M)
        if members is None:
            out.append((m.group("target"), None))
        elif members.group(1) == "false":
            out.append((m.group("target"), []))
        else:
            out.append((m.group("target"), [x.strip() for x in members.group(1)[1:-1].split(",") if x.strip()]))
    return out


def _import_target(target: str):
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            obj = getattr(obj, p)
        return obj
    raise AssertionError(f"cannot import {target!r}")


def test_api_reference_is_generated_from_the_code():
    """Signatures come from the code (mkdocstrings), so no hand-written list can drift from it."""
    hand_written = [line for info, line, _ in code_blocks(_api_text()) if ".signature" in info]
    assert not hand_written, f"docs/api.md has hand-written signature lists at lines {hand_written}: use ::: blocks"
    covered: set[int] = set()
    for target, members in api_directives():
        obj = _import_target(target)
        covered.add(id(obj))
        names = members if members is not None else [n for n in vars(obj) if not n.startswith("_")]
        for name in names:
            assert hasattr(obj, name), f"docs/api.md: ::: {target} lists the member {name!r}, which does not exist"
            covered.add(id(inspect.getattr_static(obj, name) if inspect.isclass(obj) else getattr(obj, name)))
    missing = [n for n in API_NAMES if id(getattr(ck, n)) not in covered]
    assert not missing, f"docs/api.md generates no reference for: {missing}"


def test_directive_parser_reads_members():
    assert _DIRECTIVE.search("::: ckptcore.Checkpoint\n    options:\n      members: [save, read]\n\n")
    assert ("ckptcore.Checkpoint", ["save", "write", "restore", "read", "sync", "save_counter"]) in api_directives()


# -- docs/format.md describes what the code writes ------------------------------------------------------
def test_format_page_matches_the_code(tmp_path):
    import json

    import numpy as np

    from ckptcore import state
    from ckptcore.formats import ckpt as fmt

    text = (DOCS / "format.md").read_text(encoding="utf-8")
    assert f'struct.Struct("{fmt._HEADER.format}")' in text and fmt.HEADER_SIZE == 32
    assert f"`{fmt.MAGIC.decode()}`" in text
    assert f"# Checkpoint format (versions {fmt.FORMAT_VERSION}–{fmt.READABLE_VERSIONS[-1]})" in text
    assert f"multiple of {fmt.ALIGNMENT} bytes" in text
    assert f"`P{fmt.INDEX_SUFFIX}`" in text and "`P.data-00000-of-00001`" in text
    assert f"`{state.STATE_FILENAME}`" in text
    # Every JSON field the code writes is documented.
    with toy_optimizer("doc.opt", "m", np.ones(2)) as (w, opt):
        path = ck.Checkpoint(w=w, opt=opt).save(str(tmp_path / "ckpt"))
    raw = open(path + fmt.INDEX_SUFFIX, "rb").read()
    length = int.from_bytes(raw[16:24], "little")  # the JSON; the binary columns follow it
    doc = json.loads(raw[fmt.HEADER_SIZE:fmt.HEADER_SIZE + length])
    fields = set(doc) | set(doc["nodes"]) | set(doc["tensors"]) | set(doc["nodes"]["slots"])  # (version 5: columns)
    fields |= set(doc["nodes"]["attribute"]) | set(doc["nodes"]["child_name"])   # (version 6: names tables)
    fields |= set(json.loads((tmp_path / state.STATE_FILENAME).read_text()))
    assert {"slots", "state", "attribute", "child", "crc32c", "dims"} <= fields
    assert doc["nodes"]["slots"] and doc["nodes"]["state"]  # the example exercises both
    undocumented = sorted(f for f in fields if f"`{f}`" not in text)
    assert not undocumented, f"docs/format.md does not describe the fields {undocumented}"
    assert doc["version"] == fmt.DERIVED_KEYS_VERSION and "key" not in doc["tensors"]  # keys follow from the graph
    plain = open(ck.Checkpoint(w=np.ones(2)).write(str(tmp_path / "plain")) + fmt.INDEX_SUFFIX, "rb").read()
    assert int.from_bytes(plain[8:12], "little") == fmt.DERIVED_KEYS_VERSION
    assert f"slots is version {fmt.SLOT_COLUMNS_VERSION}" in text
    assert f"is version {fmt.DERIVED_KEYS_VERSION} ([no keys" in text
    table = fmt.decode_index(raw, "x").table
    assert table.offset and all(o % fmt.tensor_alignment(n, d) == 0
                                for o, n, d in zip(table.offset, table.nbytes, table.dtype))
    assert f"{fmt.ALIGNED_TENSOR_BYTES // 1024} KiB or more starts at an offset" in text
    assert set(doc["tensors"]["offset"]) == {"dtype", "offset", "count"}  # a binary column reference
    # version 1, still read, is documented too
    index = fmt.decode_index(raw, "x")
    index.version = 1
    old = json.loads(index.encode()[fmt.HEADER_SIZE:])
    nodes = old["nodes"]
    v1_fields = ({f for n in nodes for f in n}
                 | {f for n in nodes for e in n.get("attributes", {}).values() for f in e}
                 | {f for n in nodes for s in n.get("slots", []) for f in s})
    section = text[text.index("### Version 1 (still read)"):text.index("## The data file")]
    assert not sorted(f for f in v1_fields if f"`{f}`" not in section)
