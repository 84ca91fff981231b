"""The language-modelling loss: next-token cross-entropy of a causal LM over (inputs, targets) windows. Training,
in-loop validation and `cpt.evaluate` all compute it here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def lm_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Token-mean (or summed, `reduction="sum"`) cross-entropy, computed in fp32 whatever the compute dtype."""
    logits = model(input_ids=inputs, use_cache=False).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction=reduction)
