"""The training loop the resume tests share (CPU and CUDA)."""

from __future__ import annotations

import torch


def train(model, opt, data, sched=None) -> list[float]:
    """One optimizer step per ``(x, y)`` batch of ``data`` (MSE loss); the losses, as floats."""
    losses = []
    for x, y in data:
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
    return losses
