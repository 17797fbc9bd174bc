"""Every ckptcore hook, declared in one place.

Plugins implement these with ``@ckptcore.hookimpl`` and register through the
``ckptcore`` entry-point group (the built-in numpy adapters and fsspec storage
do exactly the same). Core code never calls ``pm.hook.*`` directly; it goes
through the typed wrappers in :mod:`ckptcore.registry`.

Example -- a plugin module::

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
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ckptcore_register_adapters():
    """Return a list of :class:`~ckptcore.AdapterRegistration` records.

    Collected from every plugin (not first-result). Called once, lazily, the
    first time ckptcore needs to find an adapter, and again after a plugin is
    registered or unregistered.

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

    Historic: called once per plugin, when the first restore is queued (plugins
    registered later are called on registration). ``notify`` is
    :func:`ckptcore.notify_dependency_added`; call it as
    ``notify(parent, local_name, child)`` whenever a framework object gains a
    child (torch's global module/parameter/buffer registration hooks, say).

    Example::

        @ck.hookimpl
        def ckptcore_install_creation_hooks(notify):
            torch.nn.modules.module.register_module_module_registration_hook(
                lambda mod, name, sub: notify(mod, name, sub))
    """
