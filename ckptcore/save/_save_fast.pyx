# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled steps of the save walk (:func:`ckptcore.save.plan_save`) for the commonest objects.

Built by ``make venv`` (``setup.py``, Cython) beside the restore's ``restore/_plan_fast``;
where it is missing (no compiler, or ``CKPTCORE_PURE_PYTHON=1``) ``_plan_save`` does the same
work in Python, branch for branch. Each function does one loop of that walk exactly as the
Python code does it and stops, handing the rest back, at the first object it does not
recognise with certainty.
"""

cimport numpy as cnp
from cpython.long cimport PyLong_FromVoidPtr

cnp.import_array()

cdef object _ndarray = cnp.ndarray


def plain_leaves(Py_ssize_t i, list objs, list adapters, list escs, object numpy_adapter, dict dtype_info,
                 str node_type, str value_attr, str value_suffix, list node_adapter, list node_types,
                 list child_start, Py_ssize_t nchildren, list attr_name, list attr_start, list keys,
                 list dtypes, list arrays, list node_of):
    """Plan nodes ``i, i + 1, ...`` while each is a plain array; return the first node that is not.

    A node is a plain array when its object is exactly an ``np.ndarray``, C-contiguous, whose
    dtype is (identically) the second item of its ``dtype_info`` entry, its adapter's class is
    exactly ``numpy_adapter`` and its escaped path in ``escs`` is not empty (not the root). For
    each, the columns get what the Python loop appends for it: the adapter's ``name``,
    ``node_type``, no children (``nchildren``, the child count so far), the one attribute
    ``value_attr``, the key (its path + ``value_suffix``), the dtype's name (the first item of
    its ``dtype_info`` entry), the array itself and its node id.

    Example:
        >>> import numpy as np
        >>> from ckptcore.builtin.numpy_adapters import NumpyArrayAdapter
        >>> a, b = np.zeros(2, np.float32), np.zeros(3, np.float32)[::2]   # b is not C-contiguous
        >>> cols = [[] for _ in range(9)]
        >>> plain_leaves(1, [None, a, b], [None, NumpyArrayAdapter(), NumpyArrayAdapter()], ["", "a", "b"],
        ...              NumpyArrayAdapter, {a.dtype: ("float32", a.dtype)}, "numpy.ndarray", "VARIABLE_VALUE",
        ...              "/.ATTRIBUTES/VARIABLE_VALUE", cols[0], cols[1], cols[2], 0, cols[3], cols[4], cols[5],
        ...              cols[6], cols[7], cols[8])
        2
        >>> cols[5], cols[6], cols[7][0] is a, cols[8]
        (['a/.ATTRIBUTES/VARIABLE_VALUE'], ['float32'], True, [1])
    """
    cdef Py_ssize_t n = len(objs)
    cdef object obj, adapter, esc, info, dt, name = None, last = None
    cdef object nch = nchildren   # (one int object for every node's child start)
    cdef cnp.ndarray arr
    if len(adapters) < n or len(escs) < n:
        return i
    while i < n:
        obj = objs[i]
        adapter = adapters[i]
        if type(obj) is not _ndarray or type(adapter) is not numpy_adapter:
            break
        esc = escs[i]
        if type(esc) is not str or not esc:
            break
        arr = <cnp.ndarray>obj
        dt = <object>cnp.PyArray_DESCR(arr)
        info = dtype_info.get(dt)
        if (info is None or type(info) is not tuple or len(<tuple>info) != 2 or (<tuple>info)[1] is not dt
                or not cnp.PyArray_IS_C_CONTIGUOUS(arr)):
            break
        if adapter is not last:   # (one adapter object for all arrays, as a rule: its name read once)
            name = adapter.name
            last = adapter
        node_adapter.append(name)
        node_types.append(node_type)
        child_start.append(nch)
        attr_name.append(value_attr)
        attr_start.append(len(attr_name))
        keys.append(<str>esc + value_suffix)
        dtypes.append((<tuple>info)[0])
        arrays.append(obj)
        node_of.append(i)
        i += 1
    return i


def add_children(list children, Py_ssize_t i, str esc, dict index_of, dict adapter_cache, dict escaped,
                 object resolve, object escape, list objs, list adapters, list parents, list names,
                 list escs, list child_name, list child_id):
    """Add the ``(name, object)`` pairs of node ``i`` to the walk; return how many it added.

    As the Python loop does for each pair: an object seen before (``index_of``, by ``id``) is
    referred to by its node id; a new one becomes the next node, with its adapter (from
    ``adapter_cache`` by exact type, else ``resolve(obj, name)``), its parent ``i``, its name
    and its escaped path (``esc + "/" +`` the name's escape, from ``escaped``, else
    ``escape(name)``). It stops at the first item that is not a tuple of a ``str`` and an
    object, and returns its position: the caller's loop goes on from there. (The caller walks
    the root's children itself: its paths have no leading ``esc + "/"``.)

    Example:
        >>> a = object()
        >>> objs, adapters, parents, names, escs, child_name, child_id = [None], [None], [-1], [""], ["m"], [], []
        >>> index_of = {id(objs[0]): 0}
        >>> add_children([("w", a), ("v", a)], 0, "m", index_of, {object: "ad"}, {"w": "w", "v": "v"}, None, None,
        ...              objs, adapters, parents, names, escs, child_name, child_id)
        2
        >>> escs, child_name, child_id, adapters
        (['m', 'm/w'], ['w', 'v'], [1, 1], [None, 'ad'])
    """
    cdef Py_ssize_t k, n = len(children), j
    cdef object pair, name, child, key, got, ad, e
    cdef object parent = i        # (one int object for every child's parent)
    cdef str prefix = esc + "/"   # (one concatenation per child, not two)
    for k in range(n):
        pair = children[k]
        if type(pair) is not tuple or len(<tuple>pair) != 2:
            return k
        name = (<tuple>pair)[0]
        if type(name) is not str:
            return k
        child = (<tuple>pair)[1]
        key = PyLong_FromVoidPtr(<void*>child)
        got = index_of.get(key)
        if got is None:
            try:
                ad = adapter_cache.get(type(child))
            except TypeError:  # an unhashable metaclass
                ad = None
            if ad is None:
                ad = resolve(child, name)
            e = escaped.get(name)
            if e is None:
                e = escape(name)
            j = len(objs)
            got = j   # (the node id boxed once: index_of and child_id share it)
            index_of[key] = got
            objs.append(child)
            adapters.append(ad)
            parents.append(parent)
            names.append(name)
            escs.append(prefix + <str>e)
        child_name.append(name)
        child_id.append(got)
    return n


def add_slots(list pending, dict index_of, dict dtype_info, list escs, str slot_mid, str value_suffix,
              dict escaped, object escape, str slot_adapter, str node_type, str value_attr,
              list node_adapter, list node_types, list child_start, Py_ssize_t nchildren, list attr_name,
              list attr_start, list keys, list dtypes, list arrays, list node_of, dict slots):
    """Add the optimizer slots of ``pending`` (``(optimizer node, SlotVariable)`` pairs) as nodes; return
    how many it did.

    As the Python loop does for each: a slot whose variable is not in the walk (``index_of``, by
    ``id``) is dropped; one whose value is exactly an ``np.ndarray``, C-contiguous, with a dtype
    written as it is (``dtype_info``, as ``plain_leaves``) becomes the next node: adapter
    ``slot_adapter``, type ``node_type``, no children, the one attribute ``value_attr``, the key
    ``escs[variable] + slot_mid + escs[optimizer] + "/" + escaped name + value_suffix``, and an
    entry ``(variable node, name, slot node)`` in ``slots[optimizer node]``. It stops at the
    first slot it does not recognise (a value to convert, a name that is not a ``str``).

    Example:
        >>> import numpy as np
        >>> from ckptcore.adapters import SlotVariable
        >>> w, m = np.zeros(2, np.float32), np.ones(2, np.float32)
        >>> cols, slots = [[] for _ in range(9)], {}
        >>> cols[0] += ["root.adapter", "opt.adapter", "w.adapter"]   # nodes 0-2: the slot becomes node 3
        >>> add_slots([(1, SlotVariable(w, "m", m)), (1, SlotVariable(object(), "m", m))], {id(w): 2}, {m.dtype: ("float32", m.dtype)},
        ...           ["", "opt", "w"], "/.OPTIMIZER_SLOT/", "/.ATTRIBUTES/VARIABLE_VALUE", {}, lambda s: s,
        ...           "ckptcore.slot", "numpy.ndarray", "VARIABLE_VALUE", cols[0], cols[1], cols[2], 0, cols[3],
        ...           cols[4], cols[5], cols[6], cols[7], cols[8], slots)
        2
        >>> cols[5], slots
        (['w/.OPTIMIZER_SLOT/opt/m/.ATTRIBUTES/VARIABLE_VALUE'], {1: [(2, 'm', 3)]})
    """
    cdef Py_ssize_t k, n = len(pending), slot_id
    cdef object item, opt_id, slot, var_id, value, info, dt, name, e, got
    cdef cnp.ndarray arr
    for k in range(n):
        item = pending[k]
        if type(item) is not tuple or len(<tuple>item) != 2:
            return k
        opt_id = (<tuple>item)[0]
        slot = (<tuple>item)[1]
        var_id = index_of.get(PyLong_FromVoidPtr(<void*>slot.variable))
        if var_id is None:
            continue  # the variable is not part of this checkpoint: TF drops such slots too
        value = slot.value
        if type(value) is not _ndarray:
            return k
        arr = <cnp.ndarray>value
        dt = <object>cnp.PyArray_DESCR(arr)
        info = dtype_info.get(dt)
        if (info is None or type(info) is not tuple or len(<tuple>info) != 2 or (<tuple>info)[1] is not dt
                or not cnp.PyArray_IS_C_CONTIGUOUS(arr)):
            return k
        name = slot.name
        if type(name) is not str:
            return k
        e = escaped.get(name)
        if e is None:
            e = escape(name)
        slot_id = len(node_adapter)
        node_adapter.append(slot_adapter)
        node_types.append(node_type)
        child_start.append(nchildren)
        attr_name.append(value_attr)
        attr_start.append(len(attr_name))
        keys.append(<str>escs[var_id] + slot_mid + <str>escs[opt_id] + "/" + <str>e + value_suffix)
        dtypes.append((<tuple>info)[0])
        arrays.append(value)
        node_of.append(slot_id)
        got = slots.get(opt_id)
        if got is None:
            got = slots[opt_id] = []
        (<list>got).append((var_id, name, slot_id))
    return n


def array_columns(list arrays):
    """``(nbytes, ndim, dims)`` of ``arrays`` as int64 arrays: each one's size in bytes and rank, and
    every array's dimensions one after another; None if an item is not an ``np.ndarray``.

    What the column writer (``save/write.py``) otherwise makes with ``np.fromiter`` over each
    array's ``nbytes``, ``ndim`` and ``shape``, with no shape tuple made.

    Example:
        >>> import numpy as np
        >>> [c.tolist() for c in array_columns([np.zeros((2, 3), np.float32), np.zeros((), np.int8)])]
        [[24, 1], [2, 0], [2, 3]]
    """
    cdef Py_ssize_t n = len(arrays), i, j, k, total = 0, d
    cdef cnp.ndarray arr
    cdef object a
    for i in range(n):
        a = arrays[i]
        if not isinstance(a, _ndarray):
            return None
        total += cnp.PyArray_NDIM(<cnp.ndarray>a)
    cdef cnp.ndarray[cnp.int64_t, ndim=1] nbytes = cnp.PyArray_EMPTY(1, [n], cnp.NPY_INT64, 0)
    cdef cnp.ndarray[cnp.int64_t, ndim=1] ndim = cnp.PyArray_EMPTY(1, [n], cnp.NPY_INT64, 0)
    cdef cnp.ndarray[cnp.int64_t, ndim=1] dims = cnp.PyArray_EMPTY(1, [total], cnp.NPY_INT64, 0)
    cdef cnp.npy_intp* shape
    k = 0
    for i in range(n):
        arr = <cnp.ndarray>arrays[i]
        d = cnp.PyArray_NDIM(arr)
        shape = cnp.PyArray_DIMS(arr)
        nbytes[i] = cnp.PyArray_NBYTES(arr)
        ndim[i] = d
        for j in range(d):
            dims[k] = shape[j]
            k += 1
    return nbytes, ndim, dims
