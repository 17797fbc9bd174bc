"""Pure naming rules for checkpoint keys, compatible with TensorFlow's.

No I/O, no framework imports. A key is the escaped path of local names from
the root to an object, then ``.ATTRIBUTES`` and the attribute name::

    model/sub/k/.ATTRIBUTES/VARIABLE_VALUE

exactly as TensorFlow builds them (``trackable_utils.checkpoint_key``): the path
is always followed by ``/``, so an attribute of the root object itself has the
key ``/.ATTRIBUTES/VARIABLE_VALUE``.

Local names escape ``.`` as ``..`` and ``/`` as ``.S`` so that user names can
never collide with the reserved ``.ATTRIBUTES``/``.OPTIMIZER_SLOT`` segments.

Example:
    >>> from ckptcore import naming
    >>> naming.object_key(["model", "w/b"], naming.VARIABLE_VALUE)
    'model/w.Sb/.ATTRIBUTES/VARIABLE_VALUE'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

ESCAPE_CHAR = "."
ATTRIBUTES = ".ATTRIBUTES"
OPTIMIZER_SLOT = ".OPTIMIZER_SLOT"
VARIABLE_VALUE = "VARIABLE_VALUE"


def escape_local_name(name: str) -> str:
    """Escape one edge name so it contains no ``/`` and no reserved segment.

    Example:
        >>> escape_local_name("a.b/c")
        'a..b.Sc'
    """
    return name.replace(ESCAPE_CHAR, ESCAPE_CHAR * 2).replace("/", ESCAPE_CHAR + "S")


def unescape_local_name(escaped: str) -> str:
    """Invert :func:`escape_local_name`.

    Example:
        >>> unescape_local_name("a..b.Sc")
        'a.b/c'
    """
    out = []
    i = 0
    while i < len(escaped):
        ch = escaped[i]
        if ch == ESCAPE_CHAR and i + 1 < len(escaped):
            nxt = escaped[i + 1]
            out.append("." if nxt == "." else "/" if nxt == "S" else ch + nxt)
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def object_path(names: Iterable[str]) -> str:
    """Join local names (unescaped) into an escaped object path.

    Example:
        >>> object_path(["model", "layers", "0"])
        'model/layers/0'
    """
    return "/".join(escape_local_name(n) for n in names)


def object_key(names: Sequence[str], attribute: str) -> str:
    """The checkpoint key of an attribute of the object at ``names``.

    As TensorFlow's, the key of an attribute of the root object starts with ``/``.

    Example:
        >>> object_key(["save_counter"], VARIABLE_VALUE)
        'save_counter/.ATTRIBUTES/VARIABLE_VALUE'
        >>> object_key([], VARIABLE_VALUE)
        '/.ATTRIBUTES/VARIABLE_VALUE'
    """
    return f"{object_path(names)}/{ATTRIBUTES}/{escape_local_name(attribute)}"


def slot_key(variable_names: Sequence[str], optimizer_names: Sequence[str], slot_name: str) -> str:
    """The key of an optimizer slot, attached to its variable's path as TF does.

    ``<variable path>/.OPTIMIZER_SLOT/<optimizer path>/<slot name>/.ATTRIBUTES/VARIABLE_VALUE``,
    with an empty path where the variable or the optimizer is the root (as TensorFlow's
    ``trackable_utils.slot_variable_key``).

    Example:
        >>> slot_key(["model", "w"], ["opt"], "m")
        'model/w/.OPTIMIZER_SLOT/opt/m/.ATTRIBUTES/VARIABLE_VALUE'
        >>> slot_key(["w"], [], "m")
        'w/.OPTIMIZER_SLOT//m/.ATTRIBUTES/VARIABLE_VALUE'
    """
    return (f"{object_path(variable_names)}/{OPTIMIZER_SLOT}/{object_path(optimizer_names)}/"
            f"{escape_local_name(slot_name)}/{ATTRIBUTES}/{VARIABLE_VALUE}")


_LEGACY_ROOT = (ATTRIBUTES + "/", OPTIMIZER_SLOT + "/")


def upgrade_legacy_key(key: str, *, optimizer_is_root: bool = False) -> str:
    """TensorFlow's form of a key written by ckptcore before it followed TF to the letter.

    Those versions dropped the ``/`` that TF puts after an empty (root) path:
    ``.ATTRIBUTES/x`` for an attribute of the root, ``.OPTIMIZER_SLOT/...`` for a slot of
    a root variable, and ``v/.OPTIMIZER_SLOT/m/...`` (one segment where TF has an empty
    optimizer path and the slot name) for a slot of a root optimizer. Keys already in
    TF's form are returned unchanged.

    Example:
        >>> upgrade_legacy_key(".ATTRIBUTES/VARIABLE_VALUE")
        '/.ATTRIBUTES/VARIABLE_VALUE'
        >>> upgrade_legacy_key("w/.OPTIMIZER_SLOT/m/.ATTRIBUTES/VARIABLE_VALUE", optimizer_is_root=True)
        'w/.OPTIMIZER_SLOT//m/.ATTRIBUTES/VARIABLE_VALUE'
        >>> upgrade_legacy_key("model/w/.ATTRIBUTES/VARIABLE_VALUE")
        'model/w/.ATTRIBUTES/VARIABLE_VALUE'
    """
    if key.startswith(_LEGACY_ROOT):
        key = "/" + key
    if optimizer_is_root:
        parts = key.split("/")
        try:
            s = parts.index(OPTIMIZER_SLOT)
            a = parts.index(ATTRIBUTES, s)
        except ValueError:
            return key
        if a == s + 2:  # <slot name> alone between the markers: the empty optimizer path was dropped
            parts.insert(s + 1, "")
            key = "/".join(parts)
    return key


def display_path(names: Sequence[str]) -> str:
    """A human-readable path for messages; the root is ``(root)``.

    Example:
        >>> display_path([])
        '(root)'
    """
    return object_path(names) or "(root)"
