"""Every ckptcore hook, declared in one place.

Plugins implement these with ``@ckptcore.hookimpl`` and register through the
``ckptcore`` entry-point group (the built-in numpy adapters and fsspec storage
do exactly the same). Core code never calls ``pm.hook.*`` directly; it goes
through the typed wrappers in :mod:`ckptcore.registry`.

Example -- a plugin module (``mypkg/ckpt_plugin.py``)::

    import numpy as np
    import ckptcore as ck

    class Point:                      # the user's own type
        def __init__(self): self.xy = [0.0, 0.0]

    class PointAdapter(ck.Adapter):
        name = "mypkg.point"
        def attributes(self, obj): return ["xy"]
        def get_value(self, obj, attr): return np.asarray(obj.xy)
        def set_value(self, obj, attr, value): obj.xy = value.tolist()

    @ck.hookimpl
    def ckptcore_register_adapters():
        return [ck.AdapterRegistration(types=(Point,), adapter=PointAdapter())]

and in its ``pyproject.toml``::

    [project.entry-points.ckptcore]
    point = "mypkg.ckpt_plugin"
"""

from __future__ import annotations

import pluggy

PROJECT = "ckptcore"

hookspec = pluggy.HookspecMarker(PROJECT)


class _HookimplMarker(pluggy.HookimplMarker):  # type: ignore[misc]  # final in pluggy's stubs
    """Marks a function as a ckptcore hook implementation (``@ck.hookimpl``).

    Example:
        >>> import ckptcore as ck
        >>> @ck.hookimpl
        ... def ckptcore_register_adapters():
        ...     return []
        >>> hasattr(ckptcore_register_adapters, "ckptcore_impl")
        True
    """

    __slots__ = ()


hookimpl = _HookimplMarker(PROJECT)


@hookspec
def ckptcore_register_adapters():
    """Return a list of :class:`~ckptcore.AdapterRegistration` records.

    Collected from every plugin (not first-result). Called lazily, the first
    time ckptcore needs to find an adapter, and again after any plugin is
    registered or unregistered. A record is
    ``AdapterRegistration(types, adapter, priority=0, predicate=None)``:
    ``types`` holds classes or dotted class names.

    Example::

        @ck.hookimpl
        def ckptcore_register_adapters():
            return [ck.AdapterRegistration(types=("torch.nn.Module",),
                                           adapter=ModuleAdapter())]
    """


@hookspec
def ckptcore_register_storage():
    """Return a list of :class:`~ckptcore.StorageRegistration` records.

    Collected from every plugin. A registration maps URL protocols (``"s3"``,
    ``"file"``, or ``"*"`` for all) to a factory
    ``factory(protocol, storage_options, url) -> (Storage, path)``.
    The highest priority wins; equal priorities on one protocol are an error.

    Example::

        @ck.hookimpl
        def ckptcore_register_storage():
            return [ck.StorageRegistration(protocols=("gs",), priority=10,
                                           factory=lambda proto, opts, url: (MyGCS(**opts), url.split('://', 1)[1]))]
    """


@hookspec(historic=True)
def ckptcore_install_creation_hooks(notify):
    """Install framework hooks that report new dependencies (restore-on-create).

    Historic: called for each plugin when the first restore leaves a value
    waiting for an object that does not exist yet; plugins registered after
    that are called on registration. ``notify`` is
    :func:`ckptcore.notify_dependency_added`; call it as
    ``notify(parent, local_name, child)`` whenever a framework object gains a
    child. Make the implementation idempotent: it may run again in one process
    (after ``ckptcore.registry._reset_for_tests()``, for instance).

    Example::

        @ck.hookimpl
        def ckptcore_install_creation_hooks(notify):
            torch.nn.modules.module.register_module_module_registration_hook(
                lambda mod, name, sub: notify(mod, name, sub))
    """


@hookspec
def ckptcore_register_formats():
    """Return a list of :class:`~ckptcore.formats.base.FormatRegistration` records.

    Collected from every plugin. Each offers a :class:`~ckptcore.formats.base.Format`:
    readers ask every format, highest priority first, whether it recognises a
    checkpoint's own bytes (``sniff_index`` for ``<prefix>.index``, ``sniff_file``
    for a single file such as ``model.safetensors``), and the first that does
    decodes it into an object graph plus a tensor table. ckptcore's own format,
    TensorFlow's and safetensors register this way (``ckptcore.builtin.formats``).

    Example::

        from ckptcore.formats.base import Format, FormatRegistration

        class MyFormat(Format):
            name = "mine"
            def sniff_index(self, head, tail): return head.startswith(b"MINE")
            def decode_index(self, raw, path, *, storage=None, prefix=None): ...

        @ck.hookimpl
        def ckptcore_register_formats():
            return [FormatRegistration(MyFormat(), priority=5)]
    """


@hookspec(firstresult=True)
def ckptcore_collective_group(process_group):
    """Return the :class:`~ckptcore.distributed.Group` a save or restore is collective over, or None.

    First-result. Called on every ``save``/``write``/``restore``/``read`` with
    ``CheckpointOptions.process_group`` (None: the framework's default group). Return None
    when the framework's distributed runtime is not in use, so a single process is
    unaffected; do not import the framework just to find out (check ``sys.modules``).
    The group needs only ``all_gather``, ``broadcast`` and ``barrier`` on small ``bytes``,
    each with a timeout (see :mod:`ckptcore.distributed.collective`).

    Example::

        @ck.hookimpl
        def ckptcore_collective_group(process_group):
            dist = sys.modules.get("torch.distributed")
            if dist is None or not dist.is_initialized():
                return None
            return TorchGroup(process_group)
    """
