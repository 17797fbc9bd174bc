"""The public adapter protocol.

An *adapter* teaches ckptcore one kind of object. It is a stateless object
(usually a subclass of :class:`Adapter`, though inheriting is optional) that
answers four questions about a live object:

* :meth:`Adapter.children` -- its named dependencies (edges of the graph);
* :meth:`Adapter.attributes` / :meth:`Adapter.get_value` -- the arrays it owns;
* :meth:`Adapter.set_value` / :meth:`Adapter.restore_buffer` -- how to put
  restored arrays back, ideally in place;
* optionally, :meth:`Adapter.get_state` / :meth:`Adapter.set_state` for small
  JSON metadata (hyperparameters, step counts) and :meth:`Adapter.slots` /
  :meth:`Adapter.restore_slot` for optimizer slot variables.

User objects never inherit anything and nothing is attached to them: the
registry matches an object to an adapter by its type (or a predicate).

Call order during **save**: ``children`` (breadth-first over the whole graph),
then for each object ``attributes``, ``get_value`` for each attribute,
``get_state`` and ``slots``.

Call order during **restore**, for each live object matched to a checkpoint
node: ``children`` (to keep matching), ``spec`` for every attribute to be
restored (all checks happen before any assignment), then per attribute
``restore_buffer`` (if it returns an array, bytes are read straight into it)
followed by ``set_value`` (always called; with the filled buffer when one was
used), then ``restore_slot`` for slots whose optimizer and variable are both
matched, then ``set_state``.

Example -- an adapter for a user's own class::

    >>> import numpy as np, ckptcore as ck
    >>> class Counter:
    ...     def __init__(self):
    ...         self.count = np.zeros((), np.int64)
    >>> class CounterAdapter(ck.Adapter):
    ...     name = "example.counter"
    ...     def attributes(self, obj):
    ...         return ["count"]
    ...     def get_value(self, obj, attr):
    ...         return obj.count
    ...     def set_value(self, obj, attr, value):
    ...         obj.count[...] = value
    >>> _ = ck.register_adapter(Counter, CounterAdapter())
    >>> c = Counter(); c.count[...] = 7
    >>> path = ck.Checkpoint(c=c).write("memory://doc/counter")
    >>> c2 = Counter(); _ = ck.Checkpoint(c=c2).read(path)
    >>> int(c2.count)
    7
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Adapter", "AdapterRegistration", "StorageRegistration", "SlotVariable"]


@dataclass(frozen=True)
class SlotVariable:
    """One optimizer slot: ``slot_name`` of ``optimizer`` for ``variable``.

    ``value`` is the slot's array (a numpy array or anything with ``__array__``).

    Example:
        >>> import numpy as np
        >>> w = np.zeros(2); SlotVariable(variable=w, name="m", value=np.ones(2)).name
        'm'
    """

    variable: Any
    name: str
    value: Any


class Adapter:
    """Base class with default implementations of the adapter protocol.

    Subclass it and override what your type needs; every method receives the
    live object first. See the module docstring for the call order.

    Example:
        >>> import ckptcore as ck
        >>> class Nothing(ck.Adapter):
        ...     name = "example.nothing"
        >>> list(Nothing().children(object()))
        []
    """

    #: Stable identifier recorded in checkpoints ("which adapter wrote this").
    name: str = "unnamed"

    #: True when the objects of this adapter never change their attributes, and every dependency
    #: they gain is announced through :func:`ckptcore.notify_dependency_added` (``ck.Module`` and
    #: the tracked containers announce each assignment; leaves never change). A load status can then
    #: answer ``assert_consumed()`` from what the restore saw, without walking the live graph again.
    announces_changes: bool = False

    #: True when every array :meth:`slot_restore_buffers` offers is the slot's own memory (a view
    #: of the optimizer's state tensor itself): a slot read into it is restored already, and
    #: :meth:`restore_slots` receives only the other slots (read into fresh arrays, or a
    #: ``ShardBuffer``'s boxes), and is not called when there are none. False (the default): every
    #: slot is handed over, also those read into an offered array (which may be staging memory the
    #: adapter copies from).
    slot_buffers_in_place: bool = False

    def children(self, obj: Any) -> Iterable[tuple[str, Any]]:
        """Named dependencies of ``obj`` as ``(local_name, child)`` pairs.

        Example:
            >>> list(Adapter().children(object()))
            []
        """
        return ()

    def attributes(self, obj: Any) -> Sequence[str]:
        """Names of the arrays ``obj`` owns (``"VARIABLE_VALUE"`` for a variable).

        Example:
            >>> Adapter().attributes(object())
            []
        """
        return []

    def get_value(self, obj: Any, attr: str) -> Any:
        """The current value of ``attr`` as an array-like (a view is best: no copy).

        Example:
            >>> Adapter().get_value(object(), "x") is None
            True
        """
        return None

    def spec(self, obj: Any, attr: str) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype that a restored value must have.

        Example:
            >>> import numpy as np
            >>> class A(Adapter):
            ...     def get_value(self, obj, attr): return np.zeros((2, 3), np.float32)
            >>> A().spec(None, "x")
            ((2, 3), dtype('float32'))
        """
        value = np.asarray(self.get_value(obj, attr))
        return tuple(value.shape), value.dtype

    def accepts_dtype(self, obj: Any, attr: str, stored: np.dtype) -> bool:
        """Whether ``attr`` takes a value saved with dtype ``stored`` although :meth:`spec` says another.

        The default (False) makes such a value a ``ck.DtypeMismatchError``: ckptcore never
        casts on its own. An adapter returns True only for conversions it does without
        loss, or refuses in :meth:`set_value` with a ckptcore error when a value does not
        fit (say an iteration counter saved as int64 by one framework and held as int32 by
        another). The value is then read into a fresh array of the stored dtype and handed
        to :meth:`set_value`, which converts it.

        Example:
            >>> import numpy as np
            >>> Adapter().accepts_dtype(object(), "x", np.dtype("int64"))
            False
        """
        return False

    def restore_buffer(self, obj: Any, attr: str) -> np.ndarray | None:
        """A writable, C-contiguous array sharing memory with ``attr``, or None.

        When given, restore reads bytes straight into it (no extra copy) and
        then calls :meth:`set_value` with this same array.

        Example:
            >>> Adapter().restore_buffer(object(), "x") is None
            True
        """
        return None

    def value_in_place(self, obj: Any) -> np.ndarray | None:
        """The memory of an object whose one attribute is ``VARIABLE_VALUE``, when a restore needs nothing else.

        Return a writable C-contiguous array that *is* the value (a view of a tensor's memory),
        only where bytes read into it restore the object completely: its only attribute is
        ``VARIABLE_VALUE`` and :meth:`set_value` would do nothing after such a read. A restore
        then reads straight into it, without calling :meth:`attributes`, :meth:`spec`,
        :meth:`restore_buffer` or :meth:`set_value`, when its shape and dtype are the saved ones;
        otherwise (or for None, the default) it takes the usual path, which names any mismatch.
        A shortcut for adapters of many small leaves (the torch tensor adapter).

        Example:
            >>> Adapter().value_in_place(object()) is None
            True
        """
        return None

    def leaf_value(self, obj: Any) -> np.ndarray | None:
        """The one value of a leaf with nothing else to save, for a save's shortcut; None: the usual path.

        Return what :meth:`get_value` gives for ``VARIABLE_VALUE`` (a view of the object's memory,
        no copy), only where the object has no :meth:`children`, ``VARIABLE_VALUE`` is its only
        attribute, and it has no :meth:`get_state` and no :meth:`slots`. When the array is a plain
        C-contiguous numpy array of a dtype ckptcore stores as it is, a save then calls none of
        those methods for the object; anything else (None, the default, included) takes the usual
        path. The save-side twin of :meth:`value_in_place`, for adapters of many small leaves (the
        torch tensor adapter). An adapter whose :meth:`children` is not the default never gets
        this call.

        Example:
            >>> Adapter().leaf_value(object()) is None
            True
        """
        return None

    def set_value(self, obj: Any, attr: str, value: np.ndarray) -> None:
        """Assign a restored value (already shape- and dtype-checked; of the stored dtype where
        :meth:`accepts_dtype` accepted one that differs from :meth:`spec`'s).

        Example:
            >>> Adapter().set_value(object(), "x", None)
        """
        return None

    def get_state(self, obj: Any) -> Any:
        """Small JSON-serializable metadata to save with the object, or None.

        It comes back to :meth:`set_state` as JSON gives it: dict keys as strings (``{1: x}``
        returns as ``{"1": x}``) and tuples as lists; convert them back there.

        Example:
            >>> Adapter().get_state(object()) is None
            True
        """
        return None

    def validate_state(self, obj: Any, state: Any) -> None:
        """Check, before anything is restored, that ``state`` (read from a checkpoint) suits ``obj``.

        Raise (any exception) if :meth:`set_state` could not apply it: a restore calls
        this for every object with state while it checks shapes and dtypes, so a bad
        state (an edited or foreign checkpoint, a differently built optimizer) fails the
        restore before any value is assigned. The error reaches the caller as a
        :class:`~ckptcore.AdapterStateError` naming the object path. Default: accept.

        Example:
            >>> Adapter().validate_state(object(), {"lr": 0.1})
        """
        return None

    def set_state(self, obj: Any, state: Any) -> None:
        """Restore what :meth:`get_state` returned.

        Example:
            >>> Adapter().set_state(object(), {"lr": 0.1})
        """
        return None

    def slots(self, obj: Any) -> Iterable[SlotVariable]:
        """Optimizer slot variables owned by ``obj`` (TF-style slots).

        Example:
            >>> list(Adapter().slots(object()))
            []
        """
        return ()

    def restore_slot(self, obj: Any, variable: Any, name: str, value: np.ndarray) -> None:
        """Give ``obj`` (an optimizer) the restored slot ``name`` for ``variable``.

        ``value`` is the adapter's to keep: memory nobody else holds (or the buffer
        :meth:`slot_restore_buffers` offered for it).

        Example:
            >>> Adapter().restore_slot(object(), None, "m", None)
        """
        return None

    def slot_restore_buffers(self, obj: Any, requests: list[tuple[Any, str, tuple, np.dtype]]) -> list:
        """Memory to read slots straight into: one writable C-contiguous array or None per request.

        ``requests`` are ``(variable, name, shape, dtype)`` for every slot of ``obj`` this
        restore step reads, asked once per step; an optimizer that has state already can
        offer its state tensors' memory (bytes then land in place). The default offers
        none: each slot is read into a fresh array handed to :meth:`restore_slots`.

        Example:
            >>> Adapter().slot_restore_buffers(object(), [(None, "m", (2,), np.dtype("float32"))])
            [None]
        """
        return [None] * len(requests)

    def restore_slots(self, obj: Any, items: list[tuple[Any, str, np.ndarray]]) -> None:
        """Every slot of ``obj`` one restore step read, ``(variable, name, value)`` each, in one call.

        Runs after the read and before :meth:`set_state`. The default calls
        :meth:`restore_slot` for each; override it to do per-call work (such as
        mapping parameters to their groups) once instead of once per slot.

        Example:
            >>> Adapter().restore_slots(object(), [(None, "m", np.zeros(2))])
        """
        for variable, name, value in items:
            self.restore_slot(obj, variable, name, value)


def _keeps_method(table: dict, cls: type, name: str, if_missing: bool = False) -> bool:
    """Whether adapter class ``cls`` keeps :class:`Adapter`'s method ``name`` (does not override it).

    Cached per class in ``table`` (one table per method name). ``if_missing`` is the answer for
    a class without the method at all (a duck-typed adapter).

    Example:
        >>> class Mine(Adapter):
        ...     def children(self, obj):
        ...         return []
        >>> _keeps_method({}, Mine, "children"), _keeps_method({}, Mine, "attributes")
        (False, True)
        >>> _keeps_method({}, object, "value_in_place", if_missing=True)
        True
    """
    keeps = table.get(cls)
    if keeps is None:
        method = getattr(cls, name, None)
        keeps = table[cls] = if_missing if method is None else method is getattr(Adapter, name)
    return keeps


@dataclass(frozen=True)
class AdapterRegistration:
    """A plugin's claim: ``adapter`` handles objects of ``types``.

    ``types`` holds classes or dotted class names (``"torch.nn.Module"``), so
    a plugin need not import a framework to register for it. Subclasses match
    too; the most specific class wins. ``predicate`` claims objects by duck
    typing and is consulted only when no type matches. Between two claims on
    the same class the higher ``priority`` wins; equal priorities are an
    :class:`~ckptcore.AdapterConflictError`.

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> class Arrays(ck.Adapter):
        ...     name = "doc.arrays"
        >>> reg = ck.AdapterRegistration(types=(np.ndarray,), adapter=Arrays())
        >>> reg.priority
        0
    """

    types: tuple[Any, ...] = ()
    adapter: Any = None
    priority: int = 0
    predicate: Callable[[Any], bool] | None = None
    plugin: str = field(default="", compare=False)

    def __post_init__(self):
        check_adapter(self.adapter)
        if not isinstance(self.types, tuple):
            raise _invalid(f"AdapterRegistration(types=...) must be a tuple of classes or dotted class names, got "
                           f"{self.types!r}")
        for t in self.types:
            if not (isinstance(t, type) or (isinstance(t, str) and t.strip())):
                raise _invalid(f"adapter {self.adapter.name!r} is registered for {t!r}, which is neither a class nor "
                               "a dotted class name such as 'torch.nn.Module'")
        if not self.types and self.predicate is None:
            raise _invalid(f"adapter {self.adapter.name!r} is registered for no type and no predicate: it would "
                           "never be used")
        if self.predicate is not None and not callable(self.predicate):
            raise _invalid(f"the predicate of adapter {self.adapter.name!r} is not callable: {self.predicate!r}")
        if type(self.priority) is not int:
            raise _invalid(f"the priority of adapter {self.adapter.name!r} must be an int, got {self.priority!r}")


def _invalid(msg: str):
    from .errors import InvalidArgumentError

    return InvalidArgumentError(msg)


#: Every public name of the adapter protocol (the methods of :class:`Adapter`, and ``name``).
PROTOCOL = frozenset(n for n in vars(Adapter) if not n.startswith("_"))


def _defines_name(adapter: Any) -> bool:
    """True if ``adapter`` (or a class of it other than :class:`Adapter`) sets ``name`` itself."""
    if "name" in getattr(adapter, "__dict__", {}):
        return True
    return any("name" in vars(k) for k in type(adapter).__mro__ if k is not Adapter)


def _overrides(adapter: Any, method: str) -> bool:
    """True if ``adapter`` has ``method`` of its own: not :class:`Adapter`'s default (duck-typed adapters count)."""
    if not isinstance(adapter, Adapter):
        return callable(getattr(adapter, method, None))
    return any(method in vars(k) for k in type(adapter).__mro__ if k is not Adapter and k is not object)


def check_adapter(adapter: Any) -> None:
    """Check an adapter where it is registered: an instance, with a ``name``, only protocol methods.

    A public method that is not part of the protocol is almost always a misspelt one
    (``get_values`` for ``get_value``), which would otherwise be ignored silently; name
    helpers with a leading underscore.

    Example:
        >>> import ckptcore as ck
        >>> class A(ck.Adapter):
        ...     name = "doc.a"
        ...     def get_values(self, obj, attr): ...
        >>> try:
        ...     check_adapter(A())
        ... except ck.InvalidArgumentError as e:
        ...     print(str(e).split(";")[0])
        adapter 'doc.a' defines get_values(), which is not part of the adapter protocol (did you mean get_value?)
    """
    if adapter is None:
        raise _invalid("an adapter registration needs an adapter (an object implementing the ck.Adapter protocol)")
    if isinstance(adapter, type):
        raise _invalid(f"an adapter must be registered as an instance, not the class {adapter.__qualname__}: "
                       f"register {adapter.__qualname__}()")
    name = getattr(adapter, "name", None)
    if not isinstance(name, str) or not name.strip():
        raise _invalid(f"adapter {type(adapter).__qualname__} has no name: give its class a `name` attribute, a "
                       "stable identifier such as 'mypackage.mytype' (it is recorded in checkpoints)")
    if name == Adapter.name and not _defines_name(adapter):
        raise _invalid(f"adapter {type(adapter).__qualname__} has no name of its own (it inherits ck.Adapter's "
                       f"placeholder {Adapter.name!r}, which would make two adapters indistinguishable in "
                       f"checkpoints): give {type(adapter).__qualname__} a `name` attribute, a stable identifier "
                       "such as 'mypackage.mytype'")
    if _overrides(adapter, "slots") and not (_overrides(adapter, "restore_slot")
                                              or _overrides(adapter, "restore_slots")):
        raise _invalid(f"adapter {name!r} defines slots() but neither restore_slot() nor restore_slots(): the slot "
                       "variables it saves would be read back and dropped at restore without a word; implement "
                       "restore_slot(obj, variable, name, value) (an adapter that saves slots only for other "
                       "readers says so with a restore_slot that ignores them)")
    for klass in type(adapter).__mro__:
        if klass is Adapter or klass is object:
            continue
        for attr, value in vars(klass).items():
            if attr.startswith("_") or attr in PROTOCOL:
                continue
            if isinstance(value, (staticmethod, classmethod)) or callable(value):
                import difflib

                close = difflib.get_close_matches(attr, sorted(PROTOCOL), n=1)
                guess = f" (did you mean {close[0]}?)" if close else ""
                raise _invalid(f"adapter {name!r} defines {attr}(), which is not part of the adapter protocol{guess}; "
                               f"the protocol is {', '.join(sorted(PROTOCOL - {'name'}))}. Name helper methods "
                               "with a leading underscore")


@dataclass(frozen=True)
class StorageRegistration:
    """A plugin's claim: ``factory(protocol, storage_options, url) -> (Storage, path)`` serves ``protocols``.

    ``"*"`` claims every protocol (the fsspec fallback does this at priority
    ``-100``); a specific claim at a higher priority overrides it.

    Example:
        >>> import ckptcore as ck
        >>> ck.StorageRegistration(protocols=("myproto",), factory=lambda p, o, u: None).priority
        0
    """

    protocols: tuple[str, ...] = ()
    factory: Callable[[str, Mapping[str, Any]], Any] | None = None
    priority: int = 0
    plugin: str = field(default="", compare=False)
