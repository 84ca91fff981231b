"""Questions about a plain model's parameters that several parts ask: its decoder blocks (what FSDP wraps, LoRA
targets, activation checkpointing wraps), how many unique parameters it has and how many of them train."""

from __future__ import annotations

from torch import nn


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks, found by the class names transformers lists in `_no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(model).__name__}: no decoder layers found (its _no_split_modules is {sorted(names)})")
    return layers


def count_params(model: nn.Module) -> int:
    """Unique parameters (a tied embedding / lm_head counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def trainable_params(model: nn.Module) -> int:
    """Unique parameters that train (all of them, or LoRA's adapters)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values() if p.requires_grad)
