"""pytest plugin of the conformance kit, loaded through the ``pytest11`` entry point.

It adds two fixtures for adapter and plugin tests:

* ``ckptcore_registry`` -- the :mod:`ckptcore.registry` module; plugins the
  test registers (``ck.register_adapter``, ``register_plugin``) are
  unregistered afterwards.
* ``ckptcore_fresh_registry`` -- a registry rebuilt from scratch for the
  test (the previous one is put back afterwards), for tests that change entry points or the
  ``CKPTCORE_DISABLE_PLUGIN_AUTOLOAD``/``CKPTCORE_BLOCK_PLUGINS`` variables
  (set those with ``monkeypatch``).

The conformance tests themselves live in :class:`ckptcore.testing.AdapterConformance`
and need no plugin. Loading this module imports ckptcore (numpy, pluggy) but
builds no plugin manager.

Example:
    >>> import ckptcore.testing.pytest_plugin as p
    >>> callable(p.ckptcore_registry)
    True
"""

from __future__ import annotations

import pytest


@pytest.fixture
def ckptcore_registry():
    """The ckptcore registry; plugins registered during the test are removed afterwards.

    Example::

        def test_mine(ckptcore_registry):
            ck.register_adapter(Point, PointAdapter())   # gone after the test
    """
    from ckptcore import registry

    pm = registry.get_plugin_manager()
    before = {name for name, _ in pm.list_name_plugin()}
    yield registry
    if registry.get_plugin_manager() is pm:
        for name, _ in list(pm.list_name_plugin()):
            if name not in before:
                registry.unregister_plugin(name)
    else:  # the test rebuilt the manager: put the previous one back
        with registry._lock:
            registry._pm = pm
            registry._invalidate()


@pytest.fixture
def ckptcore_fresh_registry(monkeypatch):
    """A registry rebuilt from scratch for this test; the previous one is put back afterwards.

    Example::

        def test_blocked(ckptcore_fresh_registry, monkeypatch):
            monkeypatch.setenv("CKPTCORE_BLOCK_PLUGINS", "torch")
            ...
    """
    from ckptcore import registry

    with registry._lock:
        saved = (registry._pm, registry._creation_hooks_installed)
        registry._reset_for_tests()
    yield registry
    # Put the previous manager back: registrations made outside the test survive.
    with registry._lock:
        registry._pm, registry._creation_hooks_installed = saved
        registry._invalidate()
