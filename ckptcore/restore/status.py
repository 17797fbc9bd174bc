"""Load status objects: what a ``restore()``/``read()`` matched, and the TF assertions on it.

:class:`LoadStatus` wraps a :class:`~ckptcore.restore.session.RestoreSession`;
:class:`InitializationOnlyStatus` is what ``restore(None)`` returns.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> path = ck.Checkpoint(a=np.ones(1)).write("memory://doc/status-mod/c")
    >>> ck.Checkpoint(a=np.zeros(1)).read(path).assert_consumed() is not None
    True
"""

from __future__ import annotations

from typing import Any, NoReturn

from ..errors import AssertionFailedError
from .session import RestoreSession
from .values import _summary

__all__ = ["LoadStatus", "InitializationOnlyStatus"]


class LoadStatus:
    """What a ``restore()``/``read()`` matched; assertions re-check the live graph each call.

    Every method returns the status, so calls chain.

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> path = ck.Checkpoint(a=np.ones(1)).write("memory://doc/status/c")
        >>> ck.Checkpoint(a=np.zeros(1)).read(path).assert_consumed().assert_nontrivial_match() is not None
        True
    """

    def __init__(self, session: RestoreSession, keepalive: Any = None):
        self.session = session
        # The status keeps the graph root alive (as TF's does), so assertions
        # still see it; nothing else holds user objects.
        self._keepalive = keepalive

    def assert_consumed(self) -> LoadStatus:
        """Fail unless every checkpointed value was restored and every live object matched.

        Example:
            >>> import numpy as np, ckptcore as ck
            >>> path = ck.Checkpoint(a=np.ones(1), b=np.ones(1)).write("memory://doc/consumed/c")
            >>> try:
            ...     ck.Checkpoint(a=np.zeros(1)).read(path).assert_consumed()
            ... except AssertionError as e:
            ...     print(str(e).splitlines()[1])
            1 checkpoint values without a matching object: b/.ATTRIBUTES/VARIABLE_VALUE
        """
        unused = self.session.unmatched_checkpoint_keys()
        live = self.session.unmatched_live_paths()
        msg = None
        if unused or live:
            lines = [f"restore of {self.session.path!r} is not complete (assert_consumed):"]
            if unused:
                lines.append(_summary("checkpoint values without a matching object", unused))
            if live:
                lines.append(_summary("live objects without a value in the checkpoint", live))
            msg = "\n".join(lines)
        return self._conclude("assert_consumed", msg)

    def assert_existing_objects_matched(self) -> LoadStatus:
        """Fail if any live object in the graph got no value; unused checkpoint values are fine.

        Example:
            >>> import numpy as np, ckptcore as ck
            >>> path = ck.Checkpoint(a=np.ones(1), b=np.ones(1)).write("memory://doc/existing/c")
            >>> ck.Checkpoint(a=np.zeros(1)).read(path).assert_existing_objects_matched() is not None
            True
        """
        live = self.session.unmatched_live_paths()
        msg = None
        if live:
            msg = (f"restore of {self.session.path!r} left existing objects unmatched "
                   f"(assert_existing_objects_matched):\n"
                   + _summary("live objects without a value in the checkpoint", live))
        return self._conclude("assert_existing_objects_matched", msg)

    def assert_nontrivial_match(self) -> LoadStatus:
        """Fail unless something besides the root (and ``save_counter``) was matched.

        Example:
            >>> import numpy as np, ckptcore as ck
            >>> path = ck.Checkpoint(a=np.ones(1)).write("memory://doc/nontrivial/c")
            >>> try:
            ...     ck.Checkpoint(b=np.zeros(1)).read(path).assert_nontrivial_match()
            ... except AssertionError:
            ...     print("nothing matched")
            nothing matched
        """
        msg = None
        if not self.session.nontrivial():
            msg = (f"nothing except the root was matched when restoring {self.session.path!r} "
                   "(assert_nontrivial_match): is this the checkpoint of this model?")
        return self._conclude("assert_nontrivial_match", msg)

    def _conclude(self, what: str, msg: str | None) -> LoadStatus:
        # After a collective restore the workers agree (ckptcore.distributed.status): one that
        # fails makes every one fail, with the same message. A single process just raises.
        collective = getattr(self.session, "collective", None)
        if collective is not None:
            from ..distributed.status import agree

            msg = agree(collective, what, msg)
        if msg:
            raise AssertionFailedError(msg)
        return self

    def expect_partial(self) -> LoadStatus:
        """Silence the warning about unused checkpoint values.

        Example:
            >>> import numpy as np, ckptcore as ck
            >>> ck.Checkpoint().restore(None).expect_partial() is not None
            True
        """
        self.session.expect_partial = True
        return self

    def run_restore_ops(self, session=None) -> None:
        """No-op, for ``tf.train`` compatibility (restores run eagerly)."""

    def initialize_or_restore(self, session=None) -> None:
        """No-op, for ``tf.train`` compatibility (restores run eagerly)."""


class InitializationOnlyStatus:
    """Returned by ``restore(None)``: nothing was restored, so every assertion fails.

    Example:
        >>> import ckptcore as ck
        >>> s = ck.Checkpoint().restore(None)
        >>> try:
        ...     s.assert_existing_objects_matched()
        ... except AssertionError:
        ...     print("no checkpoint")
        no checkpoint
    """

    def _fail(self, what: str) -> NoReturn:
        raise AssertionFailedError(f"no checkpoint was given (save_path=None), so nothing was restored ({what})")

    def assert_consumed(self) -> NoReturn:
        self._fail("assert_consumed")

    def assert_existing_objects_matched(self) -> NoReturn:
        self._fail("assert_existing_objects_matched")

    def assert_nontrivial_match(self) -> NoReturn:
        self._fail("assert_nontrivial_match")

    def expect_partial(self) -> InitializationOnlyStatus:
        return self

    def run_restore_ops(self, session=None) -> None:
        """No-op."""

    def initialize_or_restore(self, session=None) -> None:
        """No-op."""
