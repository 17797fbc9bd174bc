"""The index's integer columns made from lists (``int64_column``/``uint64_column``) are what
``np.asarray`` makes of them, for every input: the fast path (``array.array``) only changes speed,
and inputs it cannot take (negative, too large, not ints) get numpy's own answer or error."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ckptcore.formats.ckpt_tables import int64_column, uint64_column

_values = st.one_of(
    st.lists(st.integers(0, 2**63 - 1), max_size=50),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=50),
    st.lists(st.one_of(st.integers(0, 100), st.booleans()), max_size=20),
    st.lists(st.integers(0, 2**64 - 1), max_size=20),
)


def _numpy(values, dtype):
    try:
        return np.asarray(values, dtype), None
    except Exception as e:  # noqa: BLE001 -- compared with what the column helper raises
        return None, type(e)


@pytest.mark.parametrize("fn, dtype", [(int64_column, np.int64), (uint64_column, np.uint64)])
@given(values=_values)
@example(values=[2**63])
@example(values=[1, 2**64 - 1])
@example(values=[-1])
@example(values=[1.5])
def test_a_column_from_a_list_is_what_numpy_makes(fn, dtype, values):
    want, err = _numpy(values, dtype)
    if err is not None:
        with pytest.raises(err):
            fn(values)
        return
    got = fn(values)
    assert got.dtype == want.dtype and got.tolist() == want.tolist()
    got[:1] = 0   # writable, as np.asarray's (the restore's planner writes into such columns)


def test_columns_from_arrays_tuples_and_numpy_ints():
    a = np.arange(5, dtype=np.int32)
    assert int64_column(a).dtype == np.int64 and int64_column(a).tolist() == [0, 1, 2, 3, 4]
    assert int64_column((3, 4)).tolist() == [3, 4]
    assert int64_column([np.int64(7), 8]).tolist() == [7, 8]
    assert uint64_column([np.uint64(2**64 - 1)]).tolist() == [2**64 - 1]
    assert int64_column([]).shape == (0,) and uint64_column([]).dtype == np.uint64
