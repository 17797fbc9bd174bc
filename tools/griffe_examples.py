"""A griffe extension for the docs site: ckptcore's docstrings, as mkdocstrings renders them.

* ckptcore's docstrings open their doctests with ``Example:`` (Google style, singular),
  which griffe would render as an admonition of Markdown, where ``>>>`` reads as a
  nested quote and ``['w']`` as a link. The heading becomes ``Examples:``, so the
  doctests render as highlighted code with their output.
* Sphinx roles (``:class:`Graph```, ``:meth:`~Storage.rename```), which ``help()``
  readers know, render as code (``Graph``, ``rename``) instead of as raw text.

The docstrings themselves stay as they are. Named in mkdocs.yml.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.M)
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj|const):`(~?)([^`]+)`")


def _role(m: re.Match) -> str:
    target = m.group(2)
    return f"`{target.rsplit('.', 1)[-1] if m.group(1) else target}`"


def rewrite(docstring: str) -> str:
    r"""The docstring with ``Example:`` headings as ``Examples:`` and Sphinx roles as code.

    Example:
        >>> rewrite("See :class:`Graph`, :meth:`~ckptcore.Storage.rename`.\nExample:\n    >>> 1")
        'See `Graph`, `rename`.\nExamples:\n    >>> 1'
    """
    return _ROLE.sub(_role, _HEADING.sub(r"\1Examples:", docstring))


class ExampleSections(griffe.Extension):
    """Apply :func:`rewrite` to each docstring as griffe loads the objects."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
