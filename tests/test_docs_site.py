"""The built documentation site: offline, with a generated API reference and pictures that tell the truth.

* nothing in the built site loads from the network (no CDN scripts or styles, no web fonts,
  no remote images), so the site works offline and behind a firewall;
* the API page carries the reference mkdocstrings generated from the code;
* the diagrams of docs/pictures.md show the keys, sizes and offsets that its example writes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

import ckptcore as ck

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
_REMOTE = re.compile(r"^\s*(https?:)?//", re.I)
# Attributes through which a page loads something (an <a href> is a link the reader may follow: allowed).
_LOADING = {"script": ("src",), "img": ("src", "srcset"), "source": ("src", "srcset"), "iframe": ("src",),
            "video": ("src", "poster"), "audio": ("src",), "embed": ("src",), "object": ("data",),
            "track": ("src",), "input": ("src",)}
_LINK_RELS_THAT_LOAD = {"stylesheet", "icon", "shortcut", "preload", "modulepreload", "prefetch", "manifest",
                        "apple-touch-icon", "preconnect", "dns-prefetch"}


class _Assets(HTMLParser):
    def __init__(self):
        super().__init__()
        self.remote: list[str] = []
        self.mermaid = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        urls = []
        if tag == "link" and _LINK_RELS_THAT_LOAD & set((a.get("rel") or "").lower().split()):
            urls.append(a.get("href") or "")
        for name in _LOADING.get(tag, ()):
            value = a.get(name) or ""
            if name == "srcset":
                urls.extend(part.strip().split(" ")[0] for part in value.split(","))
            else:
                urls.append(value)
        if "mermaid" in (a.get("class") or "").split():
            self.mermaid = True  # material would fetch mermaid.js from a CDN to draw it
        self.remote.extend(f"<{tag}> {u}" for u in urls if _REMOTE.match(u))


def remote_assets(html: str) -> tuple[list[str], bool]:
    """The network URLs a page loads by itself, and whether it asks for a mermaid diagram."""
    p = _Assets()
    p.feed(html)
    return p.remote, p.mermaid


def remote_css(css: str) -> list[str]:
    return re.findall(r"(?:url\(\s*['\"]?|@import\s+['\"])((?:https?:)?//[^'\")\s]+)", css, re.I)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def test_asset_checker_finds_remote_assets():
    remote, mermaid = remote_assets(
        '<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">'
        '<script src="//cdn.jsdelivr.net/x.js"></script><img srcset="a.png 1x, https://x.org/b.png 2x">'
        '<a href="https://example.org/">a link is fine</a><link rel="canonical" href="https://example.org/">'
        '<script src="assets/local.js"></script><div class="mermaid">graph LR</div>')
    assert remote == ["<link> https://fonts.googleapis.com/css?family=Roboto", "<script> //cdn.jsdelivr.net/x.js",
                      "<img> https://x.org/b.png"]
    assert mermaid
    assert remote_css("a{background:url('https://x.org/a.png')} @import 'http://y.org/b.css';") == [
        "https://x.org/a.png", "http://y.org/b.css"]
    assert remote_css("@font-face{src:url(../fonts/a.woff2)}") == []


def test_site_loads_nothing_from_the_network(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 10
    problems = []
    for page in pages:
        remote, mermaid = remote_assets(page.read_text(encoding="utf-8"))
        problems += [f"{page.relative_to(site)}: {r}" for r in remote]
        if mermaid:
            problems.append(f"{page.relative_to(site)}: a mermaid diagram (drawn by a script from a CDN)")
    for css in site.rglob("*.css"):
        problems += [f"{css.relative_to(site)}: {u}" for u in remote_css(css.read_text(encoding="utf-8"))]
    for svg in site.rglob("*.svg"):
        text = svg.read_text(encoding="utf-8")
        problems += [f"{svg.relative_to(site)}: {u}" for u in re.findall(r"(?:href|src)=\"((?:https?:)?//[^\"]+)\"",
                                                                          text)]
    assert not problems, "\n".join(problems)
    assert "fonts.googleapis" not in (site / "index.html").read_text(encoding="utf-8")
    assert (site / "search" / "search_index.json").is_file(), "the search index ships with the site"


def test_api_page_is_generated_from_the_docstrings(site):
    html = (site / "api" / "index.html").read_text(encoding="utf-8")
    for anchor in ["ckptcore.Checkpoint", "ckptcore.Checkpoint.restore", "ckptcore.manager.CheckpointManager",
                   "ckptcore.LoadStatus.assert_consumed", "ckptcore.latest_checkpoint", "ckptcore.errors"]:
        assert f'id="{anchor}"' in html, f"no generated reference for {anchor}"
    text = re.sub(r"<[^>]+>", "", html)
    # restore's signature with its annotations, as written in the code
    assert re.search(r"restore\(\s*save_path:\s*str\s*\|\s*None", text)
    assert "LoadStatus | InitializationOnlyStatus" in text.replace("&gt;", ">")
    # doctests of the docstrings render as code, with their output; Sphinx roles render as code too
    assert "Checkpoint keyword argument 'lr' of type float is not trackable" in html
    assert '<span class="gp">&gt;&gt;&gt; </span>' in html
    assert not re.findall(r":(?:class|meth|func|attr):`", text), "a Sphinx role was rendered as raw text"


def _pictures_checkpoint(tmp_path) -> tuple[str, dict]:
    """Run the example of docs/pictures.md (as a script: its class is __main__.Dense) and return its checkpoint."""
    text = (DOCS / "pictures.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1).replace("/tmp/", str(tmp_path) + "/")
    namespace: dict = {"__name__": "__main__"}
    exec(compile(code, "docs/pictures.md", "exec"), namespace)
    return namespace["path"], namespace


def test_pictures_show_what_the_example_writes(tmp_path):
    path, _ = _pictures_checkpoint(tmp_path)
    graph = (DOCS / "img" / "object-graph.svg").read_text(encoding="utf-8")
    layout = (DOCS / "img" / "on-disk-layout.svg").read_text(encoding="utf-8")
    reader = ck.load_checkpoint(path)
    for key in reader.keys():
        e = reader.entry(key)
        assert f">{key}<" in graph, f"object-graph.svg does not show the key {key}"
        assert f">{e.dtype} [{', '.join(map(str, e.shape))}]<" in graph, f"object-graph.svg: {key} is {e.dtype}"
        assert f">{e.offset}<" in layout, f"on-disk-layout.svg does not mark offset {e.offset} ({key})"
    for name in ("model", "layers", "Dense", "TrackedList", "save_counter", "step", "kernel", "bias"):
        assert f">{name}<" in graph
    for adapter in {n.adapter for n in reader.index.nodes}:
        assert f">{adapter}<" in graph, f"the legend misses the adapter {adapter}"
    data = Path(reader.data_file(0))
    index = Path(path + ".index")
    raw = index.read_bytes()
    json_len = int.from_bytes(raw[16:24], "little")
    assert f">{data.name} ({data.stat().st_size} bytes; offsets come from the index)<" in layout
    assert f">{index.stat().st_size:,} B<" in layout and f">{json_len:,} B<" in layout
    assert f">{index.stat().st_size - 32 - json_len:,} B<" in layout  # the binary columns
    assert sorted(os.listdir(index.parent)) == ["checkpoint", data.name, index.name]


def test_pictures_page_shows_every_picture():
    text = (DOCS / "pictures.md").read_text(encoding="utf-8")
    shown = set(re.findall(r"\]\((img/[\w-]+\.svg)\)", text))
    assert shown == {p.relative_to(DOCS).as_posix() for p in (DOCS / "img").glob("*.svg")}
    for svg in shown:
        assert "<title" in (DOCS / svg).read_text(encoding="utf-8"), f"{svg} has no <title> for screen readers"
