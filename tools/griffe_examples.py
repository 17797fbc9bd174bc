"""A griffe extension for the docs site: ``Example:`` sections render as examples.

ckptcore's docstrings open their doctests with ``Example:`` (Google style, singular),
which griffe would render as an admonition of Markdown, where ``>>>`` reads as a
nested quote and ``['w']`` as a link. This renames the heading to ``Examples:`` for
mkdocstrings only, so the doctests render as highlighted code with their output;
the docstrings themselves stay as they are. Named in mkdocs.yml.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.M)


class ExampleSections(griffe.Extension):
    """Rename each docstring's ``Example:`` heading to ``Examples:`` as objects are loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _HEADING.sub(r"\1Examples:", obj.docstring.value)
