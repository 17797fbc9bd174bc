from typing import Any

def plan_plain_arrays(matches: list[tuple], attr_start: list[int], attr_name: list[str], states: Any,
                      t_shape: list[Any] | tuple[Any, Any, Any], t_dtype: list[Any], fast_dtypes: dict,
                      numpy_adapter: type, value_attr: str, default_attrs: dict, rows: list[int], dests: list[Any],
                      callbacks: list[Any], offers_in_place: Any = None) -> list[int]: ...

def data_spans(dests: list[Any]) -> tuple[Any, Any, Any] | None: ...

def match_aligned(children: list, names: list[str], ids: list[int], shared: Any, adapter_cache: dict,
                  leaf_types: dict, is_leaf_type: Any, nchild: list[int], k: int, matches: list,
                  visit: list[int]) -> bool: ...

def due_once(entries: list, attr_start: list[int], here: dict, slot_ids: list[int], requests: list,
             wanted: dict) -> int: ...

def slot_specs(requests: list, t_shape: list[Any], t_dtype: list[Any], fast: dict, np_dtype: Any) -> list: ...

def slot_dests(requests: list, buffers: list, specs: list, in_buffers: set[int], values: dict, rows: list[int],
               dests: list[Any], callbacks: list[Any]) -> list[int]: ...

def fresh_slot_arrays(wanted: list[int], in_buffers: set[int], t_shape: list[Any], t_dtype: list[Any], fast: dict,
                      np_dtype: Any, values: dict, rows: list[int], dests: list[Any], callbacks: list[Any]) -> None: ...

def live_all_matched(queue: list, seen: set[int], skip: set[int], refs: dict, nids: dict, attr_start: list[int],
                     attr_name: list[str], cache: dict, leaf: dict, is_leaf_type: Any, no_attrs: dict,
                     keeps_default: Any, children_of: Any, adapter_of: Any) -> bool: ...
