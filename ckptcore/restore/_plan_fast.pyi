from typing import Any

def plan_plain_arrays(matches: list[tuple], attr_start: list[int], attr_name: list[str], states: Any,
                      t_shape: list[Any], t_dtype: list[Any], fast_dtypes: dict, numpy_adapter: type,
                      value_attr: str, default_attrs: dict, rows: list[int], dests: list[Any],
                      callbacks: list[Any]) -> list[int]: ...

def data_spans(dests: list[Any]) -> tuple[Any, Any, Any] | None: ...

def match_aligned(children: list, names: list[str], ids: list[int], shared: Any, adapter_cache: dict,
                  leaf_types: dict, is_leaf_type: Any, nchild: list[int], k: int, matches: list,
                  visit: list[int]) -> bool: ...
