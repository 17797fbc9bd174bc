"""ckptcore-torch adapters run through the conformance kit (ckptcore.testing)."""

from __future__ import annotations

import uuid

import fsspec
import pytest
import torch
from torch import nn

import ckptcore as ck
from ckptcore.testing import AdapterConformance


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class TestLinear(AdapterConformance):
    @pytest.fixture
    def make_object(self):
        def make(seed):
            torch.manual_seed(seed)
            return nn.Linear(3, 2)
        return make

    @pytest.fixture
    def make_late_child(self):
        def make(seed):
            torch.manual_seed(100 + seed)
            return nn.Linear(2, 2)
        return make

    @pytest.fixture
    def attach(self):
        return setattr            # torch's global module-registration hook reports it


class TestSequentialWithBuffers(AdapterConformance):
    """nn.Sequential with BatchNorm: parameters, persistent buffers, an int64 counter."""

    @pytest.fixture
    def make_object(self):
        def make(seed):
            torch.manual_seed(seed)
            net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 1))
            with torch.no_grad():
                net[1].running_mean.copy_(torch.randn(3, generator=_seeded(seed)))
                net[1].num_batches_tracked.fill_(seed + 1)
            return net
        return make

    @pytest.fixture
    def make_late_child(self):
        # A late parameter: registered through torch's parameter-registration hook.
        return lambda seed: nn.Parameter(torch.randn(2, 2, generator=_seeded(50 + seed)))

    @pytest.fixture
    def attach(self):
        return lambda parent, name, child: parent.register_parameter(name, child)


class TestTensorFloat32(AdapterConformance):
    @pytest.fixture
    def make_object(self):
        return lambda seed: torch.randn(3, 4, generator=_seeded(seed))


class TestTensorBfloat16(AdapterConformance):
    @pytest.fixture
    def make_object(self):
        return lambda seed: torch.randn(5, generator=_seeded(seed)).to(torch.bfloat16)


TORCH_DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.float16, torch.float64,
                torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2]


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
class TestTensorEveryDtype(AdapterConformance):
    @pytest.fixture
    def make_object(self, dtype):
        return lambda seed: torch.randint(0, 2, (2, 4), generator=_seeded(seed)).to(dtype)

    @pytest.fixture
    def ckpt_prefix(self):
        # Many small checkpoints: memory:// skips the disk's fsyncs.
        root = f"ckptcore-torch-conformance-{uuid.uuid4().hex}"
        yield f"memory://{root}/ckpt"
        try:
            fsspec.filesystem("memory").rm(f"/{root}", recursive=True)
        except FileNotFoundError:
            pass


class TestTensorInt64Scalar(AdapterConformance):
    @pytest.fixture
    def make_object(self):
        return lambda seed: torch.tensor(seed + 3, dtype=torch.int64)


class TestParameter(AdapterConformance):
    @pytest.fixture
    def make_object(self):
        return lambda seed: nn.Parameter(torch.randn(2, 3, generator=_seeded(seed)))


class TestNonContiguousTensor(AdapterConformance):
    """A transposed view: no in-place read possible, filled with copy_ instead."""

    @pytest.fixture
    def make_object(self):
        return lambda seed: torch.randn(3, 4, generator=_seeded(seed)).t()


def _model_and_optimizer(opt_cls, seed: int, steps: int, **hyper) -> ck.Module:
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    opt = opt_cls(model.parameters(), **hyper)
    x = torch.randn(4, 3, generator=_seeded(seed))
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
    bundle = ck.Module()
    bundle.model = model      # the optimizer's slots attach to these parameters
    bundle.optimizer = opt
    return bundle


@pytest.mark.parametrize("opt_cls, hyper", [
    (torch.optim.Adam, {"lr": 0.01}),
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
], ids=["Adam", "SGD-momentum", "AdamW"])
class TestOptimizer(AdapterConformance):
    """Model plus optimizer after some steps; the fresh one has taken no step (empty state)."""

    @pytest.fixture
    def make_object(self, opt_cls, hyper):
        return lambda seed: _model_and_optimizer(opt_cls, seed, steps=2 + seed, **hyper)

    @pytest.fixture
    def fresh_object(self, opt_cls, hyper):
        return lambda: _model_and_optimizer(opt_cls, 7, steps=0, **hyper)
