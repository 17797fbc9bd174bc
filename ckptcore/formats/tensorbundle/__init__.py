"""TensorFlow's TensorBundle checkpoints, read (and written) without TensorFlow.

- :mod:`.table`: the ``.index`` file's sorted table (blocks, restart points, footer, masked CRC32C).
- :mod:`.protos`: the few protocol buffer messages involved, described in code.
- :mod:`.bundle`: index entries and the object graph, as a ckptcore ``Index``.
- :mod:`.state`: TensorFlow's text-format ``checkpoint`` state file.

Nothing here is imported by ``import ckptcore``; protobuf loads when a TensorFlow file is met.

Example:
    >>> from ckptcore.formats.tensorbundle import TensorBundleFormat
    >>> from ckptcore.formats.tensorbundle.table import build
    >>> TensorBundleFormat().sniff_index(b"", build([]))
    True
"""

from __future__ import annotations

from ..base import Format

__all__ = ["TensorBundleFormat"]


class TensorBundleFormat(Format):
    """TensorFlow's checkpoint format: recognised by the table magic number at the end of the ``.index``.

    Example:
        >>> TensorBundleFormat().name
        'tensorflow'
    """

    name = "tensorflow"

    def sniff_index(self, head: bytes, tail: bytes) -> bool:
        from .table import has_magic

        return has_magic(tail)

    def decode_index(self, raw, path, *, storage=None, prefix=None):
        from .bundle import decode

        return decode(raw, path, storage, prefix)

    writes = True
    root_self_edge = True            # as tf.train.Checkpoint(root=m) writes its graph
    variable_length_strings = True   # DT_STRING tensors

    def write_plan(self, storage, prefix, plan, progress=None) -> None:
        from .writer import write

        write(storage, prefix, plan, progress)

    def record_save(self, storage, directory, name) -> None:
        # as tf.train.Checkpoint.save: the state file names only the latest checkpoint, relative to the directory
        from ...state import STATE_FILENAME, CheckpointState
        from .state import encode_text_state

        storage.write_atomic(storage.join(directory, STATE_FILENAME),
                             encode_text_state(CheckpointState(latest=name, all=[name])))

    def write_collective(self, group, storage, prefix, make_plan, *, timeout=None, on_commit=None) -> None:
        from .collective import collective_write

        collective_write(group, storage, prefix, make_plan, timeout=timeout, on_commit=on_commit)

    def write_state(self, storage, directory, state) -> None:
        # a CheckpointManager's list, as tf.train.CheckpointManager writes it, plus ckptcore's checksum comment
        from ...state import STATE_FILENAME
        from .state import encode_text_state

        storage.write_atomic(storage.join(directory, STATE_FILENAME), encode_text_state(state, checksum=True))
