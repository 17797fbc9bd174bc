"""The documentation site builds, its examples run, and the API reference matches the code.

* ``mkdocs build --strict`` succeeds (broken links and missing nav pages fail it);
* every ``python`` code block of the tutorial pages runs, in order, one namespace per
  page (like a notebook), with ``/tmp/`` paths redirected into a temporary directory;
* every public name is documented in ``docs/api.md``, has a docstring with an example,
  and every signature that ``docs/api.md`` shows agrees with the code.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import inspect
import io
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import ckptcore as ck

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Pages whose python blocks must run as written (the tutorial pages, and the examples of format.md and api.md).
RUNNABLE_PAGES = ["index.md", "getting-started.md", "concepts.md", "format.md", "api.md"]

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


def signature_lines() -> list[tuple[int, str]]:
    """Every line of the ``{.python .signature}`` blocks of api.md."""
    out = []
    for info, line, code in code_blocks(_api_text()):
        if ".signature" in info:
            for k, sig in enumerate(code.splitlines()):
                if sig.strip():
                    out.append((line + k, sig.strip()))
    return out


def _resolve(dotted: str):
    parts = dotted.split(".")
    assert parts[0] == "ck", f"signature {dotted!r} must start with 'ck.'"
    obj, owner = ck, None
    for p in parts[1:]:
        owner = obj
        obj = inspect.getattr_static(obj, p) if inspect.isclass(obj) else getattr(obj, p)
    return owner, obj


def _norm(annotation: str) -> str:
    tree = ast.parse(annotation, mode="eval").body
    if isinstance(tree, ast.Constant) and isinstance(tree.value, str):  # a quoted forward reference
        tree = ast.parse(tree.value, mode="eval").body
    return ast.unparse(tree)


def _documented(params: str, returns: str | None) -> ast.FunctionDef:
    src = f"def f({params}){' -> ' + returns if returns else ''}: pass"
    return ast.parse(src).body[0]


def _check_signature(where: str, sig_line: str) -> None:
    m = re.match(r"^@?(?P<name>ck(?:\.\w+)+)(?:\((?P<params>.*)\))?(?:\s*->\s*(?P<ret>.+))?$", sig_line)
    assert m, f"{where}: cannot parse signature line {sig_line!r}"
    owner, obj = _resolve(m.group("name"))
    if m.group("params") is None:
        return  # an attribute, property or decorator: it exists, which is all there is to check
    func = obj.__func__ if isinstance(obj, (staticmethod, classmethod)) else obj
    actual = inspect.signature(func)
    params = list(actual.parameters.values())
    if inspect.isclass(owner) and inspect.isfunction(func) and not isinstance(obj, staticmethod) and params:
        params = params[1:]  # self / cls
    doc_fn = _documented(m.group("params"), m.group("ret"))
    a = doc_fn.args
    documented: list[tuple[str, object, object]] = []
    pos = a.posonlyargs + a.args
    defaults = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
    for arg, d in zip(pos, defaults):
        documented.append((arg.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, d))
    if a.vararg:
        documented.append((a.vararg.arg, inspect.Parameter.VAR_POSITIONAL, None))
    for arg, d in zip(a.kwonlyargs, a.kw_defaults):
        documented.append((arg.arg, inspect.Parameter.KEYWORD_ONLY, d))
    if a.kwarg:
        documented.append((a.kwarg.arg, inspect.Parameter.VAR_KEYWORD, None))
    names_doc = [n for n, _, _ in documented]
    names_code = [p.name for p in params]
    assert names_doc == names_code, f"{where}: docs/api.md says {names_doc}, the code has {names_code}"
    for (n, kind, d), p in zip(documented, params):
        code_kind = p.kind if p.kind != inspect.Parameter.POSITIONAL_ONLY else inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert kind == code_kind, f"{where}: parameter {n!r} is {code_kind.description} in the code"
        if p.default is inspect.Parameter.empty:
            assert d is None, f"{where}: parameter {n!r} has no default in the code"
            continue
        assert d is not None, f"{where}: parameter {n!r} has the default {p.default!r} in the code"
        if repr(p.default) == "<factory>":
            continue  # a dataclass default_factory: any documented default stands for it
        try:
            doc_default = ast.literal_eval(d)
        except ValueError:
            doc_default = ast.unparse(d)
            actual_default = getattr(p.default, "__name__", repr(p.default))
            assert doc_default == actual_default, f"{where}: {n}={doc_default} but the code has {p.default!r}"
            continue
        assert doc_default == p.default, f"{where}: {n}={doc_default!r} but the code has {p.default!r}"
    if m.group("ret") and actual.return_annotation is not inspect.Signature.empty:
        code_ret = actual.return_annotation
        code_ret = code_ret if isinstance(code_ret, str) else inspect.formatannotation(code_ret)
        assert _norm(m.group("ret")) == _norm(code_ret), \
            f"{where}: returns {m.group('ret')} in docs/api.md but {code_ret} in the code"


def test_api_signatures_match_the_code():
    lines = signature_lines()
    assert len(lines) >= len(API_NAMES), "docs/api.md shows fewer signatures than there are public names"
    shown = {re.match(r"^@?ck\.(\w+)", s).group(1) for _, s in lines}
    missing = sorted(n for n in API_NAMES if n not in shown)
    assert not missing, f"docs/api.md shows no signature for: {missing}"
    problems = []
    for line, sig in lines:
        try:
            _check_signature(f"docs/api.md:{line}", sig)
        except AssertionError as e:
            problems.append(str(e))
        except Exception as e:  # an unresolvable name, a syntax error in the docs
            problems.append(f"docs/api.md:{line}: {sig!r}: {type(e).__name__}: {e}")
    assert not problems, "\n".join(problems)


def test_signature_checker_catches_drift():
    # The checker itself must notice a wrong parameter, a wrong default and a wrong name.
    _check_signature("ok", "ck.latest_checkpoint(checkpoint_dir, latest_filename=None, storage_options=None)")
    for bad in ["ck.latest_checkpoint(checkpoint_dir, latest_filename=None)",
                "ck.latest_checkpoint(checkpoint_dir, latest_filename='x', storage_options=None)",
                "ck.Variable(value, dtype=None, name=None, trainable=True)",
                "ck.Checkpoint.save(file_prefix, *, options=None)"]:
        with pytest.raises(AssertionError):
            _check_signature("bad", bad)


# -- docs/format.md describes what the code writes ------------------------------------------------------
def test_format_page_matches_the_code(tmp_path):
    import json

    import numpy as np

    from ckptcore import state
    from ckptcore.formats import ckpt as fmt

    text = (DOCS / "format.md").read_text(encoding="utf-8")
    assert f'struct.Struct("{fmt._HEADER.format}")' in text and fmt.HEADER_SIZE == 32
    assert f"`{fmt.MAGIC.decode()}`" in text
    assert f"# Checkpoint format (version {fmt.FORMAT_VERSION})" in text
    assert f"multiple of {fmt.ALIGNMENT} bytes" in text
    assert f"`P{fmt.INDEX_SUFFIX}`" in text and "`P.data-00000-of-00001`" in text
    assert f"`{state.STATE_FILENAME}`" in text
    # Every JSON field the code writes is documented.
    class Opt(ck.Adapter):
        name = "doc.opt"

        def slots(self, obj):
            return [ck.SlotVariable(variable=obj.w, name="m", value=np.ones(2))]

        def get_state(self, obj):
            return {"lr": 0.1}

    class Optim:
        def __init__(self, w):
            self.w = w

    plugin = ck.register_adapter(Optim, Opt())
    try:
        w = ck.Variable(np.zeros(2))
        path = ck.Checkpoint(w=w, opt=Optim(w)).save(str(tmp_path / "ckpt"))
    finally:
        ck.registry.unregister_plugin(plugin)
    raw = open(path + fmt.INDEX_SUFFIX, "rb").read()
    length = int.from_bytes(raw[16:24], "little")  # the JSON; the binary columns follow it
    doc = json.loads(raw[fmt.HEADER_SIZE:fmt.HEADER_SIZE + length])
    fields = set(doc) | set(doc["nodes"]) | set(doc["tensors"])
    fields |= set(json.loads((tmp_path / state.STATE_FILENAME).read_text()))
    assert {"slots", "state", "attribute", "child", "crc32c", "dims"} <= fields
    assert doc["nodes"]["slots"] and doc["nodes"]["state"]  # the example exercises both
    undocumented = sorted(f for f in fields if f"`{f}`" not in text)
    assert not undocumented, f"docs/format.md does not describe the fields {undocumented}"
    assert doc["version"] == fmt.FORMAT_VERSION
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
