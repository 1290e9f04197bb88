"""The optimiser of a run: SGD or AdamW with parameter groups, on fused kernels that can skip a step on the device.

The fused SGD / Adam / AdamW kernels take a `found_inf` flag on the device and leave weights, momentum and step
counts untouched when it is set (as `torch.amp.GradScaler` uses them): the training step (engine/train.py) hands
them its non-finite check that way, without a host sync.
"""

from __future__ import annotations

import torch
from torch import nn


def build_optimizer(
    model: nn.Module,
    loss_fn: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    nesterov: bool = True,
    loss_lr: float = 0.0,
) -> torch.optim.Optimizer:
    """SGD or AdamW; no weight decay on biases and norm layers; loss parameters (class centres) in their own group
    with `loss_lr` (0 = `lr`). Each group's "base_lr" scales with the schedule."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    scale = (loss_lr / lr) if loss_lr else 1.0
    loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
    matrices = [p for p in loss_params if p.ndim > 1]  # class centres / proxies
    scalars = [p for p in loss_params if p.ndim <= 1]  # learnable scales and biases (B-way a, b; pair-wise w, b)
    for params, wd in ((matrices, weight_decay), (scalars, 0.0)):
        if params:
            groups.append({"params": params, "weight_decay": wd, "lr_scale": scale})
    # fused kernels (CUDA and CPU): one launch per step, and the device-side skip of non-finite steps
    fast = {"fused": True} if _fused_ok(model, loss_fn) else {"foreach": True}
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, **fast)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **fast)
    raise ValueError(f"unknown optimizer {name!r}; choose one of ['adamw', 'sgd']")


def _fused_ok(*modules: nn.Module) -> bool:
    """Fused optimiser kernels exist for floating-point parameters on CUDA and the CPU."""
    params = [p for m in modules for p in m.parameters()]
    return all(p.is_floating_point() and p.device.type in ("cuda", "cpu") for p in params)


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer.step()` honours a device-side `found_inf` flag (the fused SGD / Adam / AdamW kernels)."""
    return bool(optimizer.defaults.get("fused")) and isinstance(
        optimizer, (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
    )


def zero_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Give SGD's momentum buffers a zero start before the first step. The fused kernel otherwise allocates them
    uninitialised on its first call and fills them there, which a skipped first step would leave as garbage; from
    zero, the first real step gives buf = momentum * 0 + grad = grad, as SGD's own first step does."""
    if not isinstance(optimizer, torch.optim.SGD):
        return
    for group in optimizer.param_groups:
        if group.get("momentum", 0) and group.get("dampening", 0) == 0:
            for p in group["params"]:
                state = optimizer.state[p]
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's rate to `lr` times its "lr_scale" (`optim.loss_lr`, fault rollbacks)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
