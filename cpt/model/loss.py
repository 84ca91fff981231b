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
VOCAB_BLOCK = 16_384  # rows of a low-precision weight gradient computed at once (28 MiB in bf16 at hidden 896)

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
    to hidden and weight where wanted (None otherwise). One chunk of fp32 logits exists at a time, and the weight's
    gradient is one fp32 accumulator."""
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if want_hidden else None
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
    for start in range(0, hidden.shape[0], rows):
        total += _chunk(hidden[start:start + rows], weight, targets[start:start + rows],
                        None if grad_hidden is None else grad_hidden[start:start + rows], grad_weight)
    return total, grad_hidden, grad_weight


def _chunk(h: torch.Tensor, weight: torch.Tensor, t: torch.Tensor, grad_h: Optional[torch.Tensor],
           grad_weight: Optional[torch.Tensor]) -> torch.Tensor:
    """One chunk's summed loss; its gradients written into grad_h and added to grad_weight. A function of its own:
    the chunk's logits are freed on return, before the next chunk's exist."""
    logits = (h @ weight.T).float()
    target_logits = logits.gather(1, t[:, None]).squeeze(1)
    # log-sum-exp in place of the logits (torch.logsumexp would allocate a second chunk's worth)
    peak = logits.amax(dim=-1, keepdim=True)
    sums = logits.sub_(peak).exp_().sum(dim=-1, keepdim=True)  # the logits now hold exp(logit - max)
    loss = (peak + sums.log()).squeeze(1).sub_(target_logits).sum()
    if grad_h is None and grad_weight is None:
        return loss
    grad = logits.div_(sums)  # softmax, in place
    grad[torch.arange(len(t), device=t.device), t] -= 1.0
    grad = grad.to(h.dtype)
    if grad_h is not None:
        torch.mm(grad, weight, out=grad_h)
    if grad_weight is not None:  # accumulated in place: no weight-sized temporary
        if grad.dtype == grad_weight.dtype:
            grad_weight.addmm_(grad.T, h)
        else:  # bf16 products into the fp32 accumulator, a block of vocabulary rows at a time
            for v in range(0, grad_weight.shape[0], VOCAB_BLOCK):
                grad_weight[v:v + VOCAB_BLOCK].add_(grad[:, v:v + VOCAB_BLOCK].T @ h)
    return loss


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """The summed loss of chunked_cross_entropy with its gradients, computed in forward and only scaled in backward.

    The gradients are this node's own (no one else sees them), so they are kept as plain attributes rather than saved
    tensors: backward takes them out, scales them in place and hands them over, so autograd can adopt the weight's
    gradient instead of copying it, and an fp32 accumulator is freed as soon as its cast to the weight's dtype exists.
    Hence backward runs once per forward (no retain_graph)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
        wanted = ctx.needs_input_grad[:2]  # (hidden, weight)
        total, ctx.grad_hidden, ctx.grad_weight = chunked_cross_entropy(hidden, weight, targets, rows, *wanted)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        if not hasattr(ctx, "grad_weight"):
            raise RuntimeError("ChunkedLinearCrossEntropy hands its gradients over in backward: it runs once per "
                               "forward (no retain_graph)")
        grad_hidden, grad_weight = ctx.grad_hidden, ctx.grad_weight
        del ctx.grad_hidden, ctx.grad_weight
        if grad_hidden is not None:
            grad_hidden.mul_(grad_total.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_total).to(ctx.weight_dtype)  # the fp32 one goes with this line
        return grad_hidden, grad_weight, None, None
