"""Files ckptcore recognises but does not read: each refused with what it is and what to use instead.

Recognised from their first bytes, whatever their name: ``torch.save`` files (a zip
archive holding a pickle, or a bare pickle), numpy ``.npy``/``.npz``, Keras ``.keras``
and ``.h5``. A pickle is never unpickled: loading one can run any code it names.

Example:
    >>> import pytest, ckptcore as ck
    >>> from ckptcore.formats.foreign import ForeignFormat
    >>> ForeignFormat().sniff_file(b"\\x80\\x04\\x95")
    True
"""

from __future__ import annotations

from ..errors import UnsupportedFormatError
from .base import Format, identify_bytes

_RESTORE_SAFETENSORS = "ck.Checkpoint(root=model).restore('model.safetensors')"

ADVICE = {
    "torch": ("ckptcore never unpickles a file: loading a pickle can run any code it contains. Load it yourself "
              "with torch.load(path, weights_only=True), or convert it once to safetensors "
              "(safetensors.torch.save_file(model.state_dict(), 'model.safetensors')) and restore that by name: "
              f"{_RESTORE_SAFETENSORS}."),
    "pickle": ("ckptcore never unpickles a file: loading a pickle can run any code it contains. If it came from "
               "torch.save, load it with torch.load(path, weights_only=True), or convert it to safetensors and "
               f"restore that by name: {_RESTORE_SAFETENSORS}."),
    "npz": ("Load it with numpy.load(path) (allow_pickle stays False) and assign the arrays, or save the arrays "
            "with ck.Checkpoint(...).write(prefix) and restore that."),
    "npy": "Load it with numpy.load(path) and assign the array, or save it with ck.Checkpoint(...).write(prefix).",
    "keras": ("Load it with keras.saving.load_model(path) (or model.load_weights for weights files); to move "
              "weights through ckptcore, save them with ck.Checkpoint(model=model).write(prefix)."),
    "hdf5": "Load Keras .h5 weights with model.load_weights(path); ckptcore does not read HDF5.",
    "index": ("Pass the checkpoint's prefix, without '.index': restore('ckpt-1'), not restore('ckpt-1.index')."),
}


def kind_of(head: bytes) -> str | None:
    """Which of :data:`ADVICE` a file starting with ``head`` is, or None.

    Example:
        >>> kind_of(b"\\x93NUMPY\\x01\\x00")
        'npy'
    """
    what = identify_bytes(head) or ""
    if what.startswith("a torch.save"):
        return "torch"
    if "pickle" in what:
        return "pickle"
    if ".npz" in what and not what.startswith("a zip"):
        return "npz"
    if what.startswith("a zip"):
        return "torch"  # unknown zip: most often torch.save; the advice covers the others too
    if ".npy" in what:
        return "npy"
    if "Keras .keras" in what:
        return "keras"
    if "HDF5" in what:
        return "hdf5"
    if what == "a ckptcore index file":
        return "index"
    return None


class ForeignFormat(Format):
    """Recognises the files of other libraries and refuses them with an explanation.

    Example:
        >>> ForeignFormat().sniff_file(b"PK\\x03\\x04")
        True
    """

    name = "foreign"

    def sniff_file(self, head: bytes) -> bool:
        return kind_of(head) is not None

    def open_file(self, storage, path, size, head):
        kind = kind_of(head) or "torch"
        what = identify_bytes(head) or "a file of another library"
        raise UnsupportedFormatError(f"{path} is {what}, not a checkpoint ckptcore reads. {ADVICE[kind]}", path=path)
