"""CUDA tensors, modules and optimizers: saved from and restored onto the GPU.

These tests need a CUDA device and are skipped without one (CI has none); they ran on an
NVIDIA H100 through the workplace's device machine (see the issue notes). A checkpoint does
not record devices: what a GPU run saved restores on a CPU and the other way round.
"""

from __future__ import annotations

import pytest
import torch
from training_loop import train

import ckptcore as ck

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _net(device="cuda", dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.LayerNorm(16),
                               torch.nn.Linear(16, 4)).to(device, dtype)


def _batches(n, device="cuda", seed=7):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 8, generator=g).to(device), torch.randn(32, 4, generator=g).to(device))
            for _ in range(n)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_gpu_module_round_trip_in_place(prefix, dtype):
    src = _net(dtype=dtype, seed=1)
    path = ck.Checkpoint(model=src).write(prefix)
    dst = _net(dtype=dtype, seed=2)
    ptrs = [p.data_ptr() for p in dst.parameters()]
    ck.Checkpoint(model=dst).read(path).assert_consumed()
    for a, b in zip(src.parameters(), dst.parameters()):
        assert b.device.type == "cuda" and b.dtype == dtype
        assert torch.equal(a, b)
    assert [p.data_ptr() for p in dst.parameters()] == ptrs  # filled in place, not replaced


def test_checkpoint_moves_between_cpu_and_gpu(prefix):
    gpu = _net(seed=3)
    cpu = _net("cpu", seed=4)
    ck.Checkpoint(model=cpu).read(ck.Checkpoint(model=gpu).write(prefix + "-g")).assert_consumed()
    for a, b in zip(gpu.parameters(), cpu.parameters()):
        assert b.device.type == "cpu" and torch.equal(a.cpu(), b)
    other = _net(seed=5)
    ck.Checkpoint(model=other).read(ck.Checkpoint(model=cpu).write(prefix + "-c")).assert_consumed()
    for a, b in zip(cpu.parameters(), other.parameters()):
        assert b.device.type == "cuda" and torch.equal(a, b.cpu())


def test_non_contiguous_and_float8_gpu_tensors(prefix):
    base = torch.arange(12, dtype=torch.float32, device="cuda").reshape(3, 4)
    f8 = torch.linspace(-2, 2, 8, device="cuda").to(torch.float8_e4m3fn)
    path = ck.Checkpoint(t=base.t(), f8=f8).write(prefix)
    out_base = torch.zeros(3, 4, device="cuda")
    out_t = out_base.t()                      # a strided view: filled through copy_
    out_f8 = torch.zeros(8, device="cuda").to(torch.float8_e4m3fn)
    ck.Checkpoint(t=out_t, f8=out_f8).read(path).assert_consumed()
    assert torch.equal(out_base, base)
    assert torch.equal(out_f8.view(torch.uint8), f8.view(torch.uint8))


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.Adam(ps, lr=1e-2),
    lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True),
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, capturable=True),
    lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, foreach=True),
], ids=["adam", "adam-fused", "adamw-capturable", "sgd-foreach"])
def test_gpu_training_resumes_bit_identically(prefix, make_opt):
    data = _batches(8)
    ref = _net()
    ref_losses = train(ref, make_opt(ref.parameters()), data)

    first = _net()
    opt = make_opt(first.parameters())
    losses = train(first, opt, data[:4])
    path = ck.Checkpoint(model=first, optimizer=opt).write(prefix)

    model = _net(seed=99)
    opt2 = make_opt(model.parameters())
    ck.Checkpoint(model=model, optimizer=opt2).read(path).assert_consumed()
    for p in model.parameters():
        for name, t in opt2.state[p].items():
            if torch.is_tensor(t) and name != "step":
                assert t.device == p.device, name
    losses += train(model, opt2, data[4:])
    assert losses == ref_losses
    for a, b in zip(ref.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_deferred_restore_onto_a_gpu_module(prefix):
    src = _net(seed=6)
    path = ck.Checkpoint(model=src).save(prefix)
    ckpt = ck.Checkpoint()
    status = ckpt.restore(path)
    ckpt.model = _net(seed=7)          # created after restore(): gets its values on assignment
    status.assert_consumed()
    for a, b in zip(src.parameters(), ckpt.model.parameters()):
        assert b.device.type == "cuda" and torch.equal(a, b)


def test_async_save_captures_gpu_values_before_returning(prefix):
    big = torch.randn(4096, 1024, device="cuda")   # 16 MiB
    expected = big.cpu().clone()
    ckpt = ck.Checkpoint(t=big)
    path = ckpt.save(prefix, options=ck.CheckpointOptions(enable_async=True))
    big.mul_(0)                                    # the training step that follows the save
    torch.cuda.synchronize()
    ckpt.sync()
    got = torch.empty_like(expected)
    ck.Checkpoint(t=got).restore(path).assert_consumed()
    assert torch.equal(got, expected)


def test_state_dict_fallback_and_cuda_generator(prefix):
    scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)
    gen = torch.Generator(device="cuda").manual_seed(5)
    torch.rand(3, device="cuda", generator=gen)
    path = ck.Checkpoint(scaler=scaler, rng=gen).write(prefix)
    expected = torch.rand(3, device="cuda", generator=gen)
    scaler2 = torch.amp.GradScaler("cuda", init_scale=2.0)
    gen2 = torch.Generator(device="cuda").manual_seed(0)
    ck.Checkpoint(scaler=scaler2, rng=gen2).read(path).assert_consumed()
    assert scaler2.state_dict()["scale"] == 1024.0
    assert torch.equal(torch.rand(3, device="cuda", generator=gen2), expected)


# -- pinned staging (CheckpointOptions(pinned_memory_bytes=...)) ---------------------------------
PINNED = ck.CheckpointOptions(pinned_memory_bytes=64 << 20)


def _big_net(seed=0, width=1024, layers=6):
    torch.manual_seed(seed)
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)]).cuda()  # 24 MiB


def _pool_sizes(monkeypatch):
    """Every pinned pool made, with the buffers it lent."""
    from ckptcore_torch import staging as pinned

    pools = []
    real = pinned.PinnedPool.__init__

    def init(self, *a, **k):
        real(self, *a, **k)
        pools.append(self)

    monkeypatch.setattr(pinned.PinnedPool, "__init__", init)
    return pools


@pytest.mark.parametrize("enable_async", [False, True])
def test_saves_stage_gpu_tensors_through_a_bounded_pinned_pool(prefix, monkeypatch, enable_async):
    pools = _pool_sizes(monkeypatch)
    src = _big_net(1)
    opts = ck.CheckpointOptions(pinned_memory_bytes=8 << 20, enable_async=enable_async)  # less than the model
    ckpt = ck.Checkpoint(model=src)
    path = ckpt.write(prefix, options=opts)
    expected = [p.detach().cpu().clone() for p in src.parameters()]
    with torch.no_grad():
        for p in src.parameters():
            p.mul_(0)  # after an async save returns, the values it saves are fixed
    ckpt.sync()
    assert len(pools) == 1 and 0 < pools[0].peak_bytes <= 8 << 20 and pools[0].released
    dst = _big_net(2)
    ck.Checkpoint(model=dst).read(path).assert_consumed()
    assert all(torch.equal(a.cpu(), b) for a, b in zip(dst.parameters(), expected))


def test_restores_stage_through_pinned_buffers_reused_tensor_after_tensor(prefix, monkeypatch):
    src = _big_net(3)
    path = ck.Checkpoint(model=src).write(prefix)
    pools = _pool_sizes(monkeypatch)
    dst = _big_net(4)
    ptrs = [p.data_ptr() for p in dst.parameters()]
    ck.Checkpoint(model=dst).read(path, options=ck.CheckpointOptions(pinned_memory_bytes=8 << 20)).assert_consumed()
    assert all(torch.equal(a, b) for a, b in zip(src.parameters(), dst.parameters()))
    assert [p.data_ptr() for p in dst.parameters()] == ptrs
    assert len(pools) == 1 and pools[0].peak_bytes <= 8 << 20 and pools[0].in_use_bytes == 0
    assert pools[0].released


def test_pinned_staging_keeps_every_dtype_bit_for_bit(prefix):
    vals = {"bf16": torch.randn(300_000, device="cuda").to(torch.bfloat16),
            "f8": torch.linspace(-2, 2, 200_000, device="cuda").to(torch.float8_e4m3fn),
            "i64": torch.arange(100_000, device="cuda"), "strided": torch.randn(512, 512, device="cuda").t()}
    path = ck.Checkpoint(**vals).write(prefix, options=PINNED)
    out = {k: torch.zeros_like(v) for k, v in vals.items()}
    ck.Checkpoint(**out).read(path, options=PINNED).assert_consumed()
    for k in vals:
        a, b = vals[k], out[k]
        assert torch.equal(a.view(torch.uint8) if a.dtype == torch.float8_e4m3fn else a,
                           b.view(torch.uint8) if b.dtype == torch.float8_e4m3fn else b), k
