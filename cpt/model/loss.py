"""The language-modelling loss: next-token cross-entropy of a causal LM over (inputs, targets) windows. Training,
in-loop validation and `cpt.evaluate` all compute it here, in one of two ways (`trainer.loss`):

- plain: the model's logits for the whole micro-batch, upcast to fp32, then cross-entropy. At a 151,936-token
  vocabulary, seq 2048 and micro-batch 4 the fp32 logits alone are 5 GB, held with their log-softmax for backward.
- chunked (default): the model runs with its output projection switched off, so it returns the final hidden states;
  the loss goes through the lm_head weight (as FSDP has gathered it for the root's forward) a chunk of tokens at a
  time, and each chunk's gradient is computed on the spot (softmax - one-hot), so no more than one chunk of logits
  (at most CHUNK_BYTES of fp32) ever exists. Same loss and gradients as plain (fp32: within 1e-5); no recomputation.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from cpt.config.schema import LossImpl
from cpt.model.doc_masking import masking_inputs

CHUNK_BYTES = 2**28  # fp32 logits of one chunk: 256 MiB (431 tokens at Qwen2.5's vocabulary, 5,461 at 12,288)

# config fields of models whose logits are not just hidden @ lm_head.T (soft-capping, scaling): plain loss only
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def lm_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean",
            impl: LossImpl = LossImpl.chunked, eos_id: Optional[int] = None) -> torch.Tensor:
    """Token-mean (or summed, `reduction="sum"`) next-token cross-entropy, computed in fp32 whatever the compute
    dtype. With `eos_id`, every document of a packed window attends only to itself (cpt.model.doc_masking)."""
    masking = masking_inputs(model, inputs, eos_id)
    if impl == LossImpl.chunked and supports_chunked(model):
        with hidden_states_out(model) as head:
            # the final (normed) hidden states
            hidden = model(input_ids=inputs, use_cache=False, **masking).logits
            args = (hidden.flatten(0, 1), head.weight, targets.flatten(), chunk_rows(head.weight.shape[0]))
            if torch.is_grad_enabled():
                total = ChunkedLinearCrossEntropy.apply(*args)
            else:  # validation: the loss alone
                total, _, _ = chunked_cross_entropy(*args, want_hidden=False, want_weight=False)
        return total if reduction == "sum" else total / targets.numel()
    logits = model(input_ids=inputs, use_cache=False, **masking).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction=reduction)


def supports_chunked(model: nn.Module) -> bool:
    head = model.get_output_embeddings()
    config = model.config
    return (type(head) is nn.Linear and head.bias is None
            and not any(getattr(config, key, None) not in (None, 1, 1.0) for key in LOGIT_TRANSFORMS))


def chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_BYTES // (4 * vocab))


@contextmanager
def hidden_states_out(model: nn.Module):
    """The model's forward with its output projection as the identity: `.logits` are the hidden states it would
    have projected. Yields the projection module (its weight is read after the forward: FSDP gathers it there and
    keeps the root gathered until backward)."""
    head = model.get_output_embeddings()
    head.forward = _identity  # an instance attribute shadows nn.Linear.forward for this call only
    try:
        with warnings.catch_warnings():
            # the hidden states come out as a view of the last block's output; nothing writes to them in place
            warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
            yield head
    finally:
        del head.forward


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int,
                          want_hidden: bool, want_weight: bool):
    """sum_i CE(hidden_i @ weight.T, target_i) over chunks of `rows` rows, and the gradients of that sum with respect
    to hidden and weight where wanted (None otherwise)."""
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if want_hidden else None
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
    for start in range(0, hidden.shape[0], rows):
        h, t = hidden[start:start + rows], targets[start:start + rows]
        logits = (h @ weight.T).float()
        lse = torch.logsumexp(logits, dim=-1)
        total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
        if want_hidden or want_weight:
            grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            grad[torch.arange(len(t), device=t.device), t] -= 1.0
            grad = grad.to(hidden.dtype)
            if want_hidden:
                grad_hidden[start:start + rows] = grad @ weight
            if want_weight:
                grad_weight += (grad.T @ h).float()
    return total, grad_hidden, grad_weight


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """The summed loss of chunked_cross_entropy with its gradients, computed in forward and only scaled in backward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
        wanted = ctx.needs_input_grad[:2]  # (hidden, weight)
        total, grad_hidden, grad_weight = chunked_cross_entropy(hidden, weight, targets, rows, *wanted)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_total.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_total).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None
