"""The few TensorFlow protocol buffer messages a TensorBundle checkpoint uses, described in code.

Written from the format's description (``tensor_bundle.proto``, ``tensor_shape.proto``,
``tensor_slice.proto``, ``versions.proto``, ``trackable_object_graph.proto``,
``checkpoint_state.proto``): field numbers and types only, no TensorFlow code. The
descriptors are built at first use into a private pool, so no generated ``_pb2`` module
ties ckptcore to one protobuf release, and ``import ckptcore`` imports no protobuf.

The same messages, as a ``.proto`` would spell them (package ``tensorflow``)::

    message VersionDef { int32 producer = 1; int32 min_consumer = 2; repeated int32 bad_consumers = 3; }
    message TensorShapeProto { message Dim { int64 size = 1; string name = 2; }
                               repeated Dim dim = 2; bool unknown_rank = 3; }
    message TensorSliceProto { message Extent { int64 start = 1; oneof has_length { int64 length = 2; } }
                               repeated Extent extent = 1; }
    message BundleHeaderProto { int32 num_shards = 1; enum Endianness { LITTLE = 0; BIG = 1; }
                                Endianness endianness = 2; VersionDef version = 3; }
    message BundleEntryProto { DataType dtype = 1; TensorShapeProto shape = 2; int32 shard_id = 3;
                               int64 offset = 4; int64 size = 5; fixed32 crc32c = 6;
                               repeated TensorSliceProto slices = 7; }
    message TrackableObjectGraph {
      message TrackableObject {
        message ObjectReference { int32 node_id = 1; string local_name = 2; }
        message SerializedTensor { string name = 1; string full_name = 2; string checkpoint_key = 3; }
        message SlotVariableReference { int32 original_variable_node_id = 1; string slot_name = 2;
                                        int32 slot_variable_node_id = 3; }
        repeated ObjectReference children = 1; repeated SerializedTensor attributes = 2;
        repeated SlotVariableReference slot_variables = 3; RegisteredSaver registered_saver = 4;
        BoolValue has_checkpoint_values = 5;   // google.protobuf.BoolValue: { bool value = 1; }
      }
      repeated TrackableObject nodes = 1;
    }
    message RegisteredSaver { string name = 1; string object_name = 2; }
    message CheckpointState { string model_checkpoint_path = 1; repeated string all_model_checkpoint_paths = 2;
                              repeated double all_model_checkpoint_timestamps = 3;
                              double last_preserved_timestamp = 4; }

``DataType`` is an int32 enum on the wire; it is declared here as ``int32`` so that values
this module does not know still parse (the reader then names them in its error).

Example:
    >>> from ckptcore.formats.tensorbundle import protos
    >>> h = protos.message("BundleHeaderProto")(num_shards=2)
    >>> protos.message("BundleHeaderProto").FromString(h.SerializeToString()).num_shards
    2
"""

from __future__ import annotations

import threading
from typing import Any

_T = {"int32": 5, "int64": 3, "bool": 8, "string": 9, "fixed32": 7, "double": 1, "enum": 14, "message": 11,
      "bytes": 12}
_OPTIONAL, _REPEATED = 1, 3

# message name -> [(field name, number, type, repeated, type name or None, oneof index or None)]
_MESSAGES: dict[str, list[tuple]] = {
    "BoolValue": [("value", 1, "bool", False, None, None)],
    "VersionDef": [("producer", 1, "int32", False, None, None), ("min_consumer", 2, "int32", False, None, None),
                   ("bad_consumers", 3, "int32", True, None, None)],
    "TensorShapeProto.Dim": [("size", 1, "int64", False, None, None), ("name", 2, "string", False, None, None)],
    "TensorShapeProto": [("dim", 2, "message", True, "TensorShapeProto.Dim", None),
                         ("unknown_rank", 3, "bool", False, None, None)],
    "TensorSliceProto.Extent": [("start", 1, "int64", False, None, None), ("length", 2, "int64", False, None, 0)],
    "TensorSliceProto": [("extent", 1, "message", True, "TensorSliceProto.Extent", None)],
    "BundleHeaderProto": [("num_shards", 1, "int32", False, None, None),
                          ("endianness", 2, "enum", False, "BundleHeaderProto.Endianness", None),
                          ("version", 3, "message", False, "VersionDef", None)],
    "BundleEntryProto": [("dtype", 1, "int32", False, None, None),
                         ("shape", 2, "message", False, "TensorShapeProto", None),
                         ("shard_id", 3, "int32", False, None, None), ("offset", 4, "int64", False, None, None),
                         ("size", 5, "int64", False, None, None), ("crc32c", 6, "fixed32", False, None, None),
                         ("slices", 7, "message", True, "TensorSliceProto", None)],
    "TrackableObjectGraph.TrackableObject.ObjectReference": [("node_id", 1, "int32", False, None, None),
                                                             ("local_name", 2, "string", False, None, None)],
    "TrackableObjectGraph.TrackableObject.SerializedTensor": [("name", 1, "string", False, None, None),
                                                              ("full_name", 2, "string", False, None, None),
                                                              ("checkpoint_key", 3, "string", False, None, None)],
    "TrackableObjectGraph.TrackableObject.SlotVariableReference": [
        ("original_variable_node_id", 1, "int32", False, None, None), ("slot_name", 2, "string", False, None, None),
        ("slot_variable_node_id", 3, "int32", False, None, None)],
    "RegisteredSaver": [("name", 1, "string", False, None, None), ("object_name", 2, "string", False, None, None)],
    "TrackableObjectGraph.TrackableObject": [
        ("children", 1, "message", True, "TrackableObjectGraph.TrackableObject.ObjectReference", None),
        ("attributes", 2, "message", True, "TrackableObjectGraph.TrackableObject.SerializedTensor", None),
        ("slot_variables", 3, "message", True, "TrackableObjectGraph.TrackableObject.SlotVariableReference", None),
        ("registered_saver", 4, "message", False, "RegisteredSaver", None),
        ("has_checkpoint_values", 5, "message", False, "BoolValue", None)],
    "TrackableObjectGraph": [("nodes", 1, "message", True, "TrackableObjectGraph.TrackableObject", None)],
    "CheckpointState": [("model_checkpoint_path", 1, "string", False, None, None),
                        ("all_model_checkpoint_paths", 2, "string", True, None, None),
                        ("all_model_checkpoint_timestamps", 3, "double", True, None, None),
                        ("last_preserved_timestamp", 4, "double", False, None, None)],
}
_ONEOFS = {"TensorSliceProto.Extent": ["has_length"]}
_ENUMS = {"BundleHeaderProto.Endianness": [("LITTLE", 0), ("BIG", 1)]}

_lock = threading.Lock()
_classes: dict[str, type] = {}


def _build() -> dict[str, type]:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="ckptcore_tensorflow.proto", package="tensorflow", syntax="proto3")
    protos: dict[str, Any] = {}
    for full in sorted(_MESSAGES, key=lambda n: n.count(".")):  # parents before nested messages
        parent, _, short = full.rpartition(".")
        msg = (protos[parent].nested_type if parent else fdp.message_type).add(name=short)
        protos[full] = msg
        for oneof in _ONEOFS.get(full, ()):
            msg.oneof_decl.add(name=oneof)
    for full, enum_values in _ENUMS.items():
        parent, _, short = full.rpartition(".")
        enum = protos[parent].enum_type.add(name=short)
        for n, v in enum_values:
            enum.value.add(name=n, number=v)
    for full, fields in _MESSAGES.items():
        msg = protos[full]
        for name, number, typ, repeated, type_name, oneof in fields:
            f = msg.field.add(name=name, number=number, type=_T[typ], label=_REPEATED if repeated else _OPTIONAL)
            if type_name:
                f.type_name = ".tensorflow." + type_name
            if oneof is not None:
                f.oneof_index = oneof
            if repeated and typ in ("int32", "int64", "double", "bool", "fixed32"):
                f.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {full: message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow." + full))
            for full in _MESSAGES}


def message(name: str) -> Any:
    """The message class for ``name`` (``"BundleEntryProto"``, ``"TrackableObjectGraph"``, ...).

    Example:
        >>> from ckptcore.formats.tensorbundle.protos import message
        >>> message("TensorShapeProto")(dim=[{"size": 3}]).dim[0].size
        3
    """
    if not _classes:
        with _lock:
            if not _classes:
                try:
                    _classes.update(_build())
                except ImportError as e:  # pragma: no cover - protobuf is a dependency
                    from ...errors import CheckpointError

                    raise CheckpointError(f"reading TensorFlow checkpoints needs protobuf ({e}); "
                                          "pip install protobuf") from None
    return _classes[name]
