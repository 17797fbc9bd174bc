"""ckptcore.testing: the adapter conformance kit (see docs/adapters.md).

Adapter authors subclass :class:`AdapterConformance` in a test module, supply
one fixture (two or three for richer checks), and get the tests every built-in
adapter passes: round trip, in-place restore, deferred restore
(restore-on-create), partial-restore status, the shape-mismatch error, and
leaks. The kit is plain pytest; ``import ckptcore`` never imports it (or
pytest).

Fixture API
-----------

Each fixture is an ordinary pytest fixture defined on your subclass (or in a
``conftest.py``); a fixture that returns a callable lets the kit build as many
objects as it needs.

``make_object`` (required) -> ``Callable[[int], object]``
    ``make_object(seed)`` returns a *new* trackable object (one your adapter
    claims; it may own a whole subgraph) whose values are a deterministic
    function of ``seed``: the same seed gives equal values, different seeds
    give different values, and the structure (children, attribute names,
    shapes, dtypes) never depends on the seed.

``fresh_object`` (optional) -> ``Callable[[], object]``
    ``fresh_object()`` returns a new object of the same structure as
    ``make_object``'s, with values different from ``make_object(0)``'s: what
    a restore fills. Default: ``lambda: make_object(1)``.

``values_of`` (optional) -> ``Callable[[object], dict[str, numpy.ndarray]]``
    ``values_of(obj)`` returns copies of everything a restore must bring back,
    keyed by any stable name. Default: :func:`values_of`, which walks the
    object's graph through the registry and copies every attribute
    (``adapter.get_value``), every ``get_state`` and every slot variable.

``make_late_child`` and ``attach`` (optional, together) -> ``Callable[[int], object]`` and
``Callable[[object, str, object], None]``
    For frameworks whose own parents report children created after
    ``restore()`` (through ``ckptcore_install_creation_hooks`` or
    :func:`ckptcore.notify_dependency_added`). ``make_late_child(seed)``
    returns a new child object with seed-determined values and
    ``attach(parent, name, child)`` attaches it to an object made by
    ``make_object`` the way users do (``setattr`` on a torch module, say).
    Define both on your subclass to get ``test_deferred_restore_native``;
    classes without them do not have that test (the deferred restore under a
    ``ck.Module`` parent always runs). The kit passes ``name="late"``;
    ``attach`` may name the edge differently (a list appends), as long as
    the same call on a fresh object makes the same edge.

``make_mismatched_object`` (optional) -> ``Callable[[], object]``
    ``make_mismatched_object()`` returns an object of the same structure
    whose first value (in ``values_of`` order) has a different shape.
    Default: ``None``: the kit then writes a checkpoint with the same keys and
    one shape changed itself (through a private mirror adapter), which works
    for any adapter.

``ckpt_prefix`` (optional) -> ``str``
    Where the kit writes checkpoints. Default: a fresh local directory
    (``tmp_path / "ckpt"``); return a ``memory://`` or ``s3://`` prefix to
    test through another storage.

Tests you get (all in :class:`AdapterConformance`)
--------------------------------------------------

``test_fixtures_are_deterministic``, ``test_round_trip_write_read``,
``test_round_trip_save_restore``, ``test_round_trip_as_root``,
``test_restore_is_in_place``, ``test_value_in_place_is_the_value_and_restores_as_the_usual_path``,
``test_leaf_value_saves_what_the_usual_path_saves``,
``test_deferred_restore_under_module``,
``test_deferred_restore_native``, ``test_partial_restore_unused_values``,
``test_partial_restore_missing_values``,
``test_partial_restore_warning_and_expect_partial``,
``test_shape_mismatch_names_path_and_modifies_nothing``,
``test_dtype_mismatch_names_path_and_modifies_nothing``,
``test_checkpoint_records_a_stable_adapter_name``,
``test_restored_objects_are_not_kept_alive``,
``test_pending_restores_are_released``.

Example -- ``tests/test_conformance.py`` of a plugin::

    import numpy as np, pytest
    from ckptcore.testing import AdapterConformance

    class TestPointAdapter(AdapterConformance):
        @pytest.fixture
        def make_object(self):
            def make(seed):
                rng = np.random.default_rng(seed)
                return Point(rng.normal(size=2))      # your type
            return make

The kit needs no pytest plugin. ckptcore also installs one (``pytest11``
entry point ``ckptcore``, module :mod:`ckptcore.testing.pytest_plugin`; with
``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1`` enable it with ``-p ckptcore``) that adds
the ``ckptcore_registry`` and ``ckptcore_fresh_registry`` fixtures.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> m = ck.Module(); m.w = np.arange(2.0)
    >>> sorted(values_of(m))
    ['w/.ATTRIBUTES/VARIABLE_VALUE']
"""

from __future__ import annotations

from ._kit import AdapterConformance, assert_values_equal, values_of

__all__ = ["AdapterConformance", "assert_values_equal", "values_of"]
