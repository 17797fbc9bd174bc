from typing import Any

def plain_leaves(i: int, objs: list, adapters: list, escs: list[str], numpy_adapter: type, dtype_info: dict,
                 node_type: str, value_attr: str, value_suffix: str, node_adapter: list[str], node_types: list[str],
                 child_start: list[int], nchildren: int, attr_name: list[str], attr_start: list[int],
                 keys: list[str], dtypes: list[str], arrays: list[Any], node_of: list[int]) -> int: ...

def add_children(children: list, i: int, esc: str, index_of: dict[int, int], adapter_cache: dict,
                 escaped: dict[str, str], resolve: Any, escape: Any, objs: list, adapters: list,
                 parents: list[int], names: list[str], escs: list[str], child_name: list[str],
                 child_id: list[int]) -> int: ...

def add_slots(pending: list, index_of: dict[int, int], dtype_info: dict, escs: list[str], slot_mid: str,
              value_suffix: str, escaped: dict[str, str], escape: Any, slot_adapter: str, node_type: str,
              value_attr: str, node_adapter: list[str], node_types: list[str], child_start: list[int],
              nchildren: int, attr_name: list[str], attr_start: list[int], keys: list[str], dtypes: list[str],
              arrays: list[Any], node_of: list[int], slots: dict[int, list]) -> int: ...

def array_columns(arrays: list[Any]) -> tuple[Any, Any, Any] | None: ...
