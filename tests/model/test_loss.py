"""The chunked cross-entropy (cpt.model.loss) gives the plain path's loss and gradients without ever holding the whole
micro-batch's logits."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cpt.config.schema import ArchConfig, LossImpl, ModelConfig
from cpt.model import loss as loss_module
from cpt.model.build import build_model
from cpt.model.loss import chunk_rows, lm_loss

VOCAB = 512


def model_and_batch(tied: bool, seed: int = 0, shape=(3, 21)):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch=ArchConfig(tie_word_embeddings=tied)))
    ids = torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))
    return model, ids[:, :-1], ids[:, 1:]


def loss_and_grads(model, inputs, targets, impl, reduction="mean"):
    model.zero_grad(set_to_none=True)
    loss = lm_loss(model, inputs, targets, reduction=reduction, impl=impl)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_chunked_loss_and_gradients_equal_the_plain_path(tied, reduction, monkeypatch):
    monkeypatch.setattr(loss_module, "CHUNK_BYTES", 4 * VOCAB * 7)  # 7 rows a chunk: 60 tokens in 9 chunks
    assert chunk_rows(VOCAB) == 7
    model, inputs, targets = model_and_batch(tied)
    plain, plain_grads = loss_and_grads(model, inputs, targets, LossImpl.plain, reduction)
    chunked, chunked_grads = loss_and_grads(model, inputs, targets, LossImpl.chunked, reduction)
    assert chunked == pytest.approx(plain, rel=1e-6)
    for name, grad in plain_grads.items():
        assert torch.allclose(chunked_grads[name], grad, rtol=1e-5, atol=1e-5), name
    assert model(input_ids=inputs).logits.shape[-1] == VOCAB  # the lm_head is itself again afterwards


def test_validation_without_grad_gives_the_same_loss(monkeypatch):
    monkeypatch.setattr(loss_module, "CHUNK_BYTES", 4 * VOCAB * 5)
    model, inputs, targets = model_and_batch(tied=True)
    with torch.no_grad():
        plain = lm_loss(model, inputs, targets, "sum", LossImpl.plain)
        chunked = lm_loss(model, inputs, targets, "sum", LossImpl.chunked)
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-6)


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_chunked_never_materializes_the_micro_batch_logits(monkeypatch):
    monkeypatch.setattr(loss_module, "CHUNK_BYTES", 4 * VOCAB * 8)
    model, inputs, targets = model_and_batch(tied=True, shape=(4, 41))  # 160 tokens > hidden size 64
    sizes = {}
    for impl in LossImpl:
        with LargestTensor() as probe:
            lm_loss(model, inputs, targets, impl=impl).backward()
        sizes[impl] = probe.largest
    tokens = targets.numel()
    assert sizes[LossImpl.plain] == tokens * VOCAB  # the whole micro-batch's logits
    # chunked: the largest tensor is the model's own (MLP activations: tokens x 256), never tokens x vocab
    assert sizes[LossImpl.chunked] == tokens * 256 < tokens * VOCAB


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_chunked_loss_holds_one_chunk_and_one_weight_gradient(dtype, monkeypatch):
    """Live bytes, counted per tensor (torch's MemTracker), of forward + backward beyond the inputs: the fp32 weight
    gradient, one chunk of fp32 logits (with its low-precision copy under bf16), the hidden states' gradient and a
    little. A chunk kept alive into the next one, a log-sum-exp that copies the chunk, or a weight-sized product or
    scaled copy would each add a chunk's or a weight's worth."""
    from torch.distributed._tools.mem_tracker import MemTracker

    vocab, hidden, tokens, rows = 4096, 64, 256, 64
    monkeypatch.setattr(loss_module, "VOCAB_BLOCK", 512)
    torch.manual_seed(0)
    weight = torch.randn(vocab, hidden, dtype=dtype, requires_grad=True)
    states = torch.randn(tokens, hidden, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,))
    tracker = MemTracker()
    with tracker:
        seen = sum(v["Total"] for v in tracker.get_tracker_snapshot("current").values())
        (loss_module.ChunkedLinearCrossEntropy.apply(states, weight, targets, rows) / tokens).backward()
    peak = sum(v["Total"] for v in tracker.get_tracker_snapshot("peak").values()) - seen
    inputs = (weight.numel() + states.numel()) * weight.element_size() + targets.numel() * 8
    chunk = rows * vocab * 4 * (1.5 if dtype == torch.bfloat16 else 1)
    bound = vocab * hidden * 4 + chunk + 2 * states.numel() * 4 + 512 * hidden * 2
    assert peak - inputs <= 1.05 * bound, (peak - inputs, bound)
    assert weight.grad.dtype == dtype and torch.isfinite(weight.grad).all()


def test_models_with_logit_transforms_use_the_plain_path():
    model, inputs, targets = model_and_batch(tied=True)
    model.config.final_logit_softcapping = 30.0
    assert not loss_module.supports_chunked(model)
