# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled planning of the commonest restore: a plain numpy array that is its own restore buffer.

Built by ``make venv`` (``setup.py``, Cython); where it is missing (no compiler, or
``CKPTCORE_PURE_PYTHON=1``) :meth:`RestoreSession._plan_values` does the same work in Python,
branch for branch (the inlined ``NumpyArrayAdapter`` case there). Everything this does not
recognise with certainty is handed back, by index, to that Python loop.
"""

cimport numpy as cnp
from cpython.long cimport PyLong_FromVoidPtr

cnp.import_array()

cdef object _ndarray = cnp.ndarray

import numpy as _np

cdef object _empty = _np.empty


cdef bint _shape_is(cnp.ndarray arr, object want):
    """Whether ``arr.shape == want`` for a tuple ``want`` (any other ``want``: compared in Python)."""
    cdef Py_ssize_t i, ndim = cnp.PyArray_NDIM(arr)
    cdef cnp.npy_intp *dims
    cdef object d
    if type(want) is not tuple:
        return (<object>arr).shape == want
    if len(<tuple>want) != ndim:
        return False
    dims = cnp.PyArray_DIMS(arr)
    for i in range(ndim):
        d = (<tuple>want)[i]
        if type(d) is not int:
            return (<object>arr).shape == want
        if <cnp.npy_intp>d != dims[i]:
            return False
    return True


cdef bint _shape_cols_is(cnp.ndarray arr, const cnp.int64_t[::1] ndim, const cnp.int64_t[::1] dims,
                         const cnp.int64_t[::1] starts, Py_ssize_t row):
    """Whether ``arr.shape`` is row ``row``'s shape in the ``(ndim, dims, starts)`` columns."""
    cdef Py_ssize_t i, nd = cnp.PyArray_NDIM(arr), start
    cdef cnp.npy_intp *shape
    if row < 0 or row >= ndim.shape[0] or ndim[row] != nd:
        return False
    start = <Py_ssize_t>starts[row]
    if start < 0 or start + nd > dims.shape[0]:
        return False
    shape = cnp.PyArray_DIMS(arr)
    for i in range(nd):
        if dims[start + i] != shape[i]:
            return False
    return True


def plan_plain_arrays(list matches, list attr_start, list attr_name, object states, object t_shape, list t_dtype,
                      dict fast_dtypes, object numpy_adapter, str value_attr, dict default_attrs,
                      list rows, list dests, list callbacks, object offers_in_place=None):
    """Append the reads of plain arrays to ``rows``/``dests``/``callbacks``; return the other matches' indices.

    A match qualifies when its adapter is exactly ``numpy_adapter``, its object exactly an
    ``np.ndarray`` that is writable and C-contiguous, with the saved shape and (identically) the
    saved dtype, and its node has one attribute, ``value_attr``, and no saved state. Its read
    is then ``(row, the array itself, no callback)``, as the Python path plans it.

    A match whose node has no attributes and no state, and whose adapter's class maps to True
    in ``default_attrs`` (it keeps ``Adapter.attributes``: never any attribute, so nothing to
    check), needs nothing and is left out too: containers and modules of the common models.

    ``t_shape`` is each row's shape tuple, or the table's shape columns ``(ndim, dims, starts)``
    (int64 arrays: each row's rank, every row's dimensions one after another, where each row's
    begin), so that no shape tuple need be made (``TensorTable.shape_index``).

    With ``offers_in_place`` (a function of an adapter class: whether it overrides
    ``Adapter.value_in_place``), a match of such an adapter whose node has one attribute,
    ``value_attr``, and no state is planned from ``adapter.value_in_place(obj)`` when that is
    exactly an ``np.ndarray``, writable and C-contiguous, with the saved shape and dtype (a
    torch parameter's memory, say); anything else (None, another object, an exception) is
    handed back, and the Python loop asks the adapter again.

    Example:
        >>> import numpy as np
        >>> from ckptcore.builtin.numpy_adapters import NumpyArrayAdapter
        >>> from ckptcore.restore._plan_fast import plan_plain_arrays
        >>> a = np.zeros(2, np.float32)
        >>> rows, dests, cbs = [], [], []
        >>> plan_plain_arrays([(a, NumpyArrayAdapter(), 1, -1, None), (object(), None, 0, -1, None)],
        ...                   [0, 0, 1], ["VARIABLE_VALUE"], {}, [(2,)], ["float32"],
        ...                   {"float32": np.dtype(np.float32)}, NumpyArrayAdapter, "VARIABLE_VALUE", {},
        ...                   rows, dests, cbs)
        [1]
        >>> rows, dests[0] is a, cbs
        ([0], True, [None])
    """
    cdef Py_ssize_t k, n = len(matches), nid, a, b, nstart = len(attr_start)
    cdef Py_ssize_t nattr = len(attr_name), ntab
    cdef tuple m
    cdef object obj, want
    cdef cnp.ndarray arr
    cdef bint has_states = bool(states)
    cdef list rest = []
    cdef dict in_place = {}   # adapter class -> whether it offers value_in_place (asked once per class)
    cdef object offers, buf, dt
    cdef bint by_cols = type(t_shape) is tuple
    cdef const cnp.int64_t[::1] c_ndim
    cdef const cnp.int64_t[::1] c_dims
    cdef const cnp.int64_t[::1] c_starts
    cdef list shapes = None
    if by_cols:
        if len(<tuple>t_shape) != 3:
            return list(range(n))
        try:
            c_ndim, c_dims, c_starts = t_shape
        except (TypeError, ValueError):   # (not C-contiguous int64 arrays)
            return list(range(n))
        ntab = c_ndim.shape[0]
        if c_starts.shape[0] != ntab:
            return list(range(n))
    elif type(t_shape) is list:
        shapes = <list>t_shape
        ntab = len(shapes)
    else:
        return list(range(n))
    if len(t_dtype) != ntab:
        return list(range(n))
    for k in range(n):
        m = <tuple?>matches[k]
        if len(m) < 3:
            rest.append(k)
            continue
        nid = <Py_ssize_t>m[2]
        if nid < 0 or nid + 1 >= nstart:
            rest.append(k)
            continue
        a = <Py_ssize_t>attr_start[nid]
        b = <Py_ssize_t>attr_start[nid + 1]
        obj = m[0]
        if a == b and default_attrs.get(type(m[1])) is True and not (has_states and nid in states):
            continue  # a container or module: no value, no state, no attributes to miss
        if (b != a + 1 or a < 0 or a >= nattr or a >= ntab or (has_states and nid in states)):
            rest.append(k)
            continue
        if type(m[1]) is not numpy_adapter or type(obj) is not _ndarray:
            if offers_in_place is None:
                rest.append(k)
                continue
            offers = in_place.get(type(m[1]))
            if offers is None:
                offers = in_place[type(m[1])] = bool(offers_in_place(type(m[1])))
            want = attr_name[a]
            if not offers or (want is not value_attr and want != value_attr):
                rest.append(k)
                continue
            try:
                buf = m[1].value_in_place(obj)
            except Exception:
                rest.append(k)   # the Python loop asks again, and names the error
                continue
            if type(buf) is not _ndarray:
                rest.append(k)
                continue
            arr = <cnp.ndarray>buf
            dt = fast_dtypes.get(t_dtype[a])
            if (dt is None or not (cnp.PyArray_ISWRITEABLE(arr) and cnp.PyArray_IS_C_CONTIGUOUS(arr))
                    or not (<object>cnp.PyArray_DESCR(arr) is dt or arr.dtype == dt)
                    or not (_shape_cols_is(arr, c_ndim, c_dims, c_starts, a) if by_cols
                            else _shape_is(arr, shapes[a]))):
                rest.append(k)
                continue
            rows.append(a)
            dests.append(buf)
            callbacks.append(None)
            continue
        want = attr_name[a]
        if want is not value_attr and want != value_attr:
            rest.append(k)
            continue
        arr = <cnp.ndarray>obj
        if not (cnp.PyArray_ISWRITEABLE(arr) and cnp.PyArray_IS_C_CONTIGUOUS(arr)):
            rest.append(k)
            continue
        if <object>cnp.PyArray_DESCR(arr) is not fast_dtypes.get(t_dtype[a]) or not (
                _shape_cols_is(arr, c_ndim, c_dims, c_starts, a) if by_cols else _shape_is(arr, shapes[a])):
            rest.append(k)
            continue
        rows.append(a)
        dests.append(obj)
        callbacks.append(None)
    return rest


def data_spans(list dests):
    """``(starts, ends, index)``: the memory span of every non-empty array in ``dests``, as int64 arrays.

    ``starts[k]`` is the address of ``dests[index[k]]``'s first byte (``__array_interface__``'s
    data pointer) and ``ends[k]`` that plus its ``nbytes``; None entries and empty arrays are
    left out. Returns None if an entry is neither None nor an ``np.ndarray`` (the caller's Python
    loop then handles every entry).

    Example:
        >>> import numpy as np
        >>> a = np.zeros(4, np.float32)
        >>> starts, ends, index = data_spans([None, a, a[:0]])
        >>> (ends - starts).tolist(), index.tolist(), int(starts[0]) == a.ctypes.data
        ([16], [1], True)
    """
    cdef Py_ssize_t n = len(dests), i, k = 0
    cdef cnp.ndarray[cnp.int64_t, ndim=1] starts = cnp.PyArray_EMPTY(1, [n], cnp.NPY_INT64, 0)
    cdef cnp.ndarray[cnp.int64_t, ndim=1] ends = cnp.PyArray_EMPTY(1, [n], cnp.NPY_INT64, 0)
    cdef cnp.ndarray[cnp.int64_t, ndim=1] index = cnp.PyArray_EMPTY(1, [n], cnp.NPY_INT64, 0)
    cdef object d
    cdef cnp.ndarray arr
    cdef cnp.npy_intp nb
    cdef cnp.int64_t start
    for i in range(n):
        d = dests[i]
        if d is None:
            continue
        if not isinstance(d, _ndarray):
            return None
        arr = <cnp.ndarray>d
        nb = cnp.PyArray_NBYTES(arr)
        if nb == 0:
            continue
        start = <cnp.int64_t><size_t>cnp.PyArray_DATA(arr)
        starts[k] = start
        ends[k] = start + nb
        index[k] = i
        k += 1
    return starts[:k], ends[:k], index[:k]


def match_aligned(list children, list names, list ids, object shared, dict adapter_cache, dict leaf_types,
                  object is_leaf_type, list nchild, object k, list matches, list visit):
    """Match a live container's children to its saved edges when they line up; False (nothing changed) if not.

    They line up when ``children`` are ``(name, object)`` tuples with exactly the saved ``names``
    in order, none of the saved child ids ``ids`` is in ``shared`` (a node other edges lead to),
    and every child's type has an adapter in ``adapter_cache`` already. Each child is then
    appended to ``matches`` as ``(object, adapter, node id, k, name)`` and, if its node has
    saved children or its adapter is not a leaf (``leaf_types``, filled by ``is_leaf_type``),
    its index to ``visit``: what :meth:`RestoreSession._match` does in Python for this case.

    Example:
        >>> import numpy as np
        >>> from ckptcore.builtin.numpy_adapters import NumpyArrayAdapter
        >>> a = np.zeros(1)
        >>> matches, visit = [], []
        >>> match_aligned([("w", a)], ["w"], [1], set(), {np.ndarray: NumpyArrayAdapter()}, {NumpyArrayAdapter: True},
        ...               None, [1, 0], 0, matches, visit)
        True
        >>> matches[0][0] is a, matches[0][2:], visit
        (True, (1, 0, 'w'), [])
    """
    cdef Py_ssize_t n = len(names), i, first, nid, nn = len(nchild)
    cdef object pair, ad, leaf, cid, t, tp, last_tp = None, last_ad = None, ad_tp, last_ad_tp = None, last_leaf = None
    if len(children) != n or len(ids) != n:
        return False
    cdef list adapters = [None] * n
    for i in range(n):
        pair = children[i]
        if type(pair) is not tuple or len(<tuple>pair) != 2:
            return False
        t = (<tuple>pair)[0]
        if t is not names[i] and t != names[i]:
            return False
        cid = ids[i]
        if type(cid) is not int or cid in shared:
            return False
        nid = <Py_ssize_t>cid
        if nid < 0 or nid >= nn:
            return False
        tp = type((<tuple>pair)[1])
        if tp is last_tp:   # (a container's children are of one type, as a rule: one lookup)
            ad = last_ad
        else:
            try:
                ad = adapter_cache.get(tp)
            except TypeError:  # an unhashable metaclass
                return False
            if ad is None:
                return False
            last_tp, last_ad = tp, ad
        adapters[i] = ad
    first = len(matches)
    for i in range(n):
        pair = children[i]
        matches.append(((<tuple>pair)[1], adapters[i], ids[i], k, names[i]))
    for i in range(n):
        ad = adapters[i]
        if nchild[<Py_ssize_t>ids[i]]:
            visit.append(first + i)
            continue
        ad_tp = type(ad)
        if ad_tp is last_ad_tp:
            leaf = last_leaf
        else:
            leaf = leaf_types.get(ad_tp)
            if leaf is None:
                leaf = is_leaf_type(ad_tp)
            last_ad_tp, last_leaf = ad_tp, leaf
        if not leaf:
            visit.append(first + i)
    return True


# -- optimizer slots (restore/slots.py): the per-slot loops of plan_slot_reads, the same results ------------
def due_once(list entries, list attr_start, dict here, list slot_ids, list requests, dict wanted):
    """``slots.due_once``, compiled: add the slots whose variable is matched to one object; see there.

    Example:
        >>> slot_ids, requests, wanted = [], [], {}
        >>> due_once([(1, "m", 2), (3, "m", 4)], [0, 0, 0, 1, 1, 1], {1: [("w", None)]}, slot_ids, requests, wanted)
        2
        >>> slot_ids, requests, list(wanted)
        ([2], [('w', 'm', 0)], [0])
    """
    cdef Py_ssize_t k, n = len(entries)
    cdef object e, a, got, slot_id
    for k in range(n):
        e = entries[k]
        if type(e) is not tuple or len(<tuple>e) != 3:
            return k
        slot_id = (<tuple>e)[2]
        a = attr_start[slot_id]
        if a == attr_start[slot_id + 1]:
            continue   # a slot node without a value
        got = here.get((<tuple>e)[0])
        if not got:
            continue
        if type(got) is not list or len(<list>got) != 1:
            return k
        slot_ids.append(slot_id)
        requests.append(((<list>got)[0][0], (<tuple>e)[1], a))
        wanted[a] = None
    return n


def slot_specs(list requests, list t_shape, list t_dtype, dict fast, object np_dtype):
    """``slots.slot_specs``, compiled: ``(variable, name, shape, dtype)`` of each request.

    Example:
        >>> import numpy as np
        >>> slot_specs([("w", "m", 0)], [(2,)], ["float32"], {"float32": np.dtype("float32")}, None)
        [('w', 'm', (2,), dtype('float32'))]
    """
    cdef Py_ssize_t k, n = len(requests)
    cdef list out = [None] * n
    cdef object r, row, dt
    for k in range(n):
        r = requests[k]
        row = r[2]
        dt = fast.get(t_dtype[row])
        if not dt:
            dt = np_dtype(row)
        out[k] = (r[0], r[1], t_shape[row], dt)
    return out


def slot_dests(list requests, list buffers, list specs, set in_buffers, dict values,
               list rows, list dests, list callbacks):
    """``slots.slot_dests``, compiled: read each slot into the usable array offered for it; see there.

    Example:
        >>> import numpy as np
        >>> a, b = np.zeros(2, np.float32), np.zeros(3, np.float32)
        >>> specs = [("w", "m", (2,), a.dtype), ("v", "m", (2,), a.dtype), ("u", "m", (2,), a.dtype)]
        >>> buffers, rows, values = [a, b, "other"], [], {}
        >>> slot_dests([("w", "m", 5), ("v", "m", 6), ("u", "m", 7)], buffers, specs, set(), values, rows, [], [])
        [2]
        >>> rows, values[5] is a, buffers[1]
        ([5], True, None)
    """
    cdef Py_ssize_t k, n = min(len(buffers), len(specs))
    cdef list rest = []
    cdef object buf, spec, row, want
    cdef cnp.ndarray arr
    for k in range(n):
        buf = buffers[k]
        if buf is None:
            continue
        if not isinstance(buf, _ndarray):
            rest.append(k)
            continue
        arr = <cnp.ndarray>buf
        spec = specs[k]
        want = spec[3]
        if not (cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_ISWRITEABLE(arr)
                and (<object>cnp.PyArray_DESCR(arr) is want or arr.dtype == want) and _shape_is(arr, spec[2])):
            buffers[k] = None   # not usable as read memory: read into a fresh array instead
            continue
        row = requests[k][2]
        if row not in in_buffers:
            in_buffers.add(row)
            values[row] = buf
            rows.append(row)
            dests.append(buf)
            callbacks.append(None)
    return rest


def fresh_slot_arrays(list wanted, set in_buffers, list t_shape, list t_dtype, dict fast, object np_dtype,
                      dict values, list rows, list dests, list callbacks):
    """``slots.fresh_slot_arrays``, compiled: a new array for each wanted row not read elsewhere.

    Example:
        >>> import numpy as np
        >>> values, rows, dests = {}, [], []
        >>> fresh_slot_arrays([0, 1], {1}, [(2,), ()], ["int8", "int8"], {"int8": np.dtype("int8")}, None,
        ...                   values, rows, dests, [])
        >>> rows, values[0].shape, dests[0] is values[0]
        ([0], (2,), True)
    """
    cdef object row, dt, arr
    for row in wanted:
        if row in in_buffers:
            continue
        dt = fast.get(t_dtype[row])
        if not dt:
            dt = np_dtype(row)
        arr = _empty(t_shape[row], dt)
        rows.append(row)
        values[row] = arr
        dests.append(arr)
        callbacks.append(None)


# -- the status's lean look at the live graph (restore/live_check.py) ---------------------------------------
def live_all_matched(list queue, set seen, set skip, dict refs, dict nids, list attr_start, list attr_name,
                     dict cache, dict leaf, object is_leaf_type, dict no_attrs, object keeps_default,
                     object children_of, object adapter_of):
    """``live_check._drain``, compiled: the lean pass from ``queue`` on; False at the first object with
    attributes that is unmatched or has an attribute its checkpoint node lacks, else True.

    Example:
        >>> import numpy as np, weakref
        >>> from ckptcore.builtin.numpy_adapters import NumpyArrayAdapter
        >>> a = np.zeros(1); ad = NumpyArrayAdapter()
        >>> args = (set(), {id(a): weakref.ref(a)}, {id(a): 1}, [0, 0, 1], ["VARIABLE_VALUE"], {}, {}, lambda c: True,
        ...         {}, lambda ad: False, None, None)
        >>> live_all_matched([(a, ad)], {id(a)}, *args), live_all_matched([(np.ones(1), ad)], set(), *args)
        (True, False)
    """
    cdef Py_ssize_t i = 0
    cdef object item, obj, adapter, key, cls, keeps, attrs, ref, nid, saved, is_leaf, kids, pair, child, ck, ad
    while i < len(queue):
        item = queue[i]
        i += 1
        obj = (<tuple>item)[0]
        adapter = (<tuple>item)[1]
        key = PyLong_FromVoidPtr(<void*>obj)
        cls = type(adapter)
        keeps = no_attrs.get(cls)
        if keeps is None:
            keeps = keeps_default(adapter)
        if not keeps and key not in skip:
            attrs = adapter.attributes(obj)
            if attrs:
                ref = refs.get(key)
                if ref is None or ref() is not obj:
                    return False   # unmatched, and it holds values
                nid = nids[key]
                saved = attr_name[attr_start[nid]:attr_start[nid + 1]]
                if attrs != saved and not set(attrs) <= set(saved):
                    return False   # an attribute the checkpoint lacks
        is_leaf = leaf.get(cls)
        if is_leaf is None:
            is_leaf = is_leaf_type(cls)
        if is_leaf:
            continue
        kids = children_of(obj, adapter, ())
        for pair in kids:
            child = pair[1]
            ck = PyLong_FromVoidPtr(<void*>child)
            if ck not in seen:
                seen.add(ck)
                try:
                    ad = cache.get(type(child))
                except TypeError:  # an unhashable metaclass
                    ad = None
                queue.append((child, ad if ad is not None else adapter_of(cache, child)))
    return True
