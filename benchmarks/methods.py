"""Save/load methods compared by the benchmarks; each writes into its own directory.

Each method has ``prepare_save(model)``, ``save(dir) -> path``,
``prepare_load(spec)`` and ``load(path)``. Every save ends with ``fsync`` of the
data it wrote; every load materializes every byte (no lazy mmap views).
"""

from __future__ import annotations

import os
import pickle

import numpy as np

from .workloads import Spec, build_model, flat_dict


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Raw:
    """One ``os.write`` of all bytes from one buffer + fsync; ``preadv`` into preallocated memory."""

    name = "raw"

    def prepare_save(self, model) -> None:
        arrays = list(flat_dict(model).values())
        self.buf = np.concatenate([a.reshape(-1).view(np.uint8) for a in arrays])

    def save(self, d: str) -> str:
        path = os.path.join(d, "raw.bin")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            mv = memoryview(self.buf)
            while len(mv):
                mv = mv[os.write(fd, mv):]
            os.fsync(fd)
        finally:
            os.close(fd)
        return path

    def prepare_load(self, spec: Spec) -> None:
        self.dest = np.empty(spec.nbytes, np.uint8)
        self.dest.fill(0)

    def load(self, path: str):
        fd = os.open(path, os.O_RDONLY)
        try:
            mv = memoryview(self.dest)
            got = 0
            while got < len(mv):
                n = os.preadv(fd, [mv[got:]], got)
                if not n:
                    raise EOFError(path)
                got += n
        finally:
            os.close(fd)
        return self.dest


class RawArrays(Raw):
    """Raw's file, loaded with ``preadv`` straight into a model's own existing arrays.

    The floor for any loader that fills the arrays of a model in place (as ckptcore's
    restore does): 1,024 buffers per ``preadv`` call, no checksums, no graph.
    """

    name = "raw-arrays"

    def prepare_load(self, spec: Spec) -> None:
        self.dest = list(flat_dict(build_model(spec, fill=False)).values())

    def load(self, path: str):
        fd = os.open(path, os.O_RDONLY)
        try:
            offset = 0
            for i in range(0, len(self.dest), 1024):
                batch = self.dest[i:i + 1024]
                want = sum(a.nbytes for a in batch)
                got = os.preadv(fd, batch, offset)
                if got != want:
                    raise EOFError(path)  # a short read: not expected from a local file in the page cache
                offset += got
        finally:
            os.close(fd)
        return self.dest


class Ckptcore:
    """``ck.Checkpoint(model=m).save(prefix)``; restore into existing arrays."""

    name = "ckptcore"

    def prepare_save(self, model) -> None:
        import ckptcore as ck

        self.model = model
        self.ckpt = ck.Checkpoint(model=model)

    def save(self, d: str) -> str:
        return self.ckpt.save(os.path.join(d, "ckpt"))

    def save_async(self, d: str) -> tuple[str, callable]:
        import ckptcore as ck

        return self.ckpt.save(os.path.join(d, "ckpt"), options=ck.CheckpointOptions(enable_async=True)), self.ckpt.sync

    def prepare_load(self, spec: Spec) -> None:
        self.dest = build_model(spec, fill=False)

    def load(self, path: str):
        import ckptcore as ck

        return ck.Checkpoint(model=self.dest).restore(path)


class Safetensors:
    name = "safetensors"

    def prepare_save(self, model) -> None:
        self.flat = flat_dict(model)

    def save(self, d: str) -> str:
        from safetensors.numpy import save_file

        path = os.path.join(d, "model.safetensors")
        save_file(self.flat, path)
        fsync_path(path)
        return path

    def prepare_load(self, spec: Spec) -> None:
        pass

    def load(self, path: str):
        from safetensors.numpy import load_file

        return load_file(path)


class Torch:
    name = "torch"

    def prepare_save(self, model) -> None:
        import torch

        self.tensors = {k: torch.from_numpy(v) for k, v in flat_dict(model).items()}

    def save(self, d: str) -> str:
        import torch

        path = os.path.join(d, "model.pt")
        with open(path, "wb") as f:
            torch.save(self.tensors, f)
            f.flush()
            os.fsync(f.fileno())
        return path

    def prepare_load(self, spec: Spec) -> None:
        import torch  # noqa: F401 -- import time is not load time

    def load(self, path: str):
        import torch

        return torch.load(path, weights_only=True)


class Savez:
    name = "np.savez"

    def prepare_save(self, model) -> None:
        self.flat = flat_dict(model)

    def save(self, d: str) -> str:
        path = os.path.join(d, "model.npz")
        with open(path, "wb") as f:
            np.savez(f, **self.flat)
            f.flush()
            os.fsync(f.fileno())
        return path

    def prepare_load(self, spec: Spec) -> None:
        pass

    def load(self, path: str):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}


class Pickle:
    name = "pickle"

    def prepare_save(self, model) -> None:
        self.flat = flat_dict(model)

    def save(self, d: str) -> str:
        path = os.path.join(d, "model.pkl")
        with open(path, "wb") as f:
            pickle.dump(self.flat, f, protocol=5)
            f.flush()
            os.fsync(f.fileno())
        return path

    def prepare_load(self, spec: Spec) -> None:
        pass

    def load(self, path: str):
        with open(path, "rb") as f:
            return pickle.load(f)  # our own file, written just now


METHODS = {m.name: m for m in (Raw, RawArrays, Ckptcore, Safetensors, Torch, Savez, Pickle)}


def available() -> list[str]:
    """Method names whose library is installed (raw, raw-arrays and ckptcore always are)."""
    out = []
    for name in METHODS:
        mod = {"safetensors": "safetensors", "torch": "torch"}.get(name)
        if mod is not None:
            try:
                __import__(mod)
            except ImportError:
                continue
        out.append(name)
    return out
