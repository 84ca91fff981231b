"""Document-boundary masking: within a packed window each document sees only itself (cpt/model/doc_masking.py)."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from cpt.config.schema import LossImpl
from cpt.model.build import attention_implementation
from cpt.model.doc_masking import document_positions, masking_inputs
from cpt.model.loss import lm_loss

EOS = 1


def test_positions_restart_after_every_eos():
    inputs = torch.tensor([[5, 6, EOS, 7, 8, 9, EOS, EOS, 4],
                           [EOS, 3, 3, 3, 3, 3, 3, 3, 3]])
    assert document_positions(inputs, EOS).tolist() == [[0, 1, 2, 0, 1, 2, 3, 0, 0],
                                                        [0, 0, 1, 2, 3, 4, 5, 6, 7]]
    no_eos = torch.tensor([[4, 5, 6]])
    assert document_positions(no_eos, EOS).tolist() == [[0, 1, 2]]


def tiny_model(kind: str, attn: str) -> torch.nn.Module:
    common = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    config = (Qwen2Config if kind == "qwen2" else LlamaConfig)(**common)
    config._attn_implementation = attn
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def logits(model, inputs: torch.Tensor) -> torch.Tensor:
    """The forward exactly as lm_loss runs it with masking on."""
    with torch.no_grad():
        return model(input_ids=inputs, use_cache=False, **masking_inputs(model, inputs, EOS)).logits


FLEX = pytest.param("flex_attention", marks=pytest.mark.full)  # compiles its kernel: ~10 s per model on CPU


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager", FLEX])
def test_a_document_does_not_see_the_one_before_it(kind, attn):
    model = tiny_model(kind, attn)
    g = torch.Generator().manual_seed(1)
    doc1, other_doc1 = torch.randint(2, 64, (2, 11), generator=g)
    doc2 = torch.randint(2, 64, (9,), generator=g)
    window = torch.cat([doc1, torch.tensor([EOS]), doc2])[None]
    changed = torch.cat([other_doc1, torch.tensor([EOS]), doc2])[None]
    start = len(doc1) + 1
    masked, masked_changed = logits(model, window), logits(model, changed)
    assert (masked[0, start:] - masked_changed[0, start:]).abs().max() <= 1e-6
    alone = logits(model, doc2[None])
    assert (masked[0, start:] - alone[0]).abs().max() <= 1e-5
    # without masking document 2 does see document 1: the test above can fail
    with torch.no_grad():
        leaky = model(input_ids=window, use_cache=False).logits
        leaky_changed = model(input_ids=changed, use_cache=False).logits
    assert (leaky[0, start:] - leaky_changed[0, start:]).abs().max() > 1e-3


@pytest.mark.parametrize("impl", [LossImpl.chunked, LossImpl.plain])
@pytest.mark.parametrize("attn", ["sdpa", FLEX])
def test_masked_window_loss_is_the_sum_of_its_documents_alone(impl, attn):
    model = tiny_model("qwen2", attn)
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(2, 64, (26,), generator=g)
    tokens[[7, 19]] = EOS  # three documents: [0..7], [8..19], [20..] (each EOS ends its document)
    inputs, targets = tokens[:-1][None], tokens[1:][None]
    with torch.no_grad():
        whole = lm_loss(model, inputs, targets, "sum", impl, eos_id=EOS)
        parts = sum(lm_loss(model, inputs[:, a:b], targets[:, a:b], "sum", impl)
                    for a, b in ((0, 8), (8, 20), (20, 25)))
    assert torch.allclose(whole, parts, rtol=1e-6, atol=1e-5)


def test_masking_off_is_the_plain_causal_loss():
    model = tiny_model("llama", "sdpa")
    g = torch.Generator().manual_seed(3)
    inputs, targets = torch.randint(1, 64, (2, 2, 16), generator=g)
    inputs[:, 5] = EOS
    with torch.no_grad():
        reference = F.cross_entropy(model(input_ids=inputs).logits.flatten(0, 1), targets.flatten())
        off = lm_loss(model, inputs, targets, impl=LossImpl.plain)
        on = lm_loss(model, inputs, targets, impl=LossImpl.plain, eos_id=EOS)
    assert torch.allclose(off, reference, atol=1e-6)
    assert not torch.allclose(on, reference, atol=1e-4)  # an EOS inside the windows: masking changes the loss


@pytest.mark.full
def test_flex_masks_a_batch_of_windows_with_documents_in_different_places():
    """Two windows of one micro-batch, their EOS at other positions: flex_attention's block mask gives each row
    the sdpa reference's logits (the mask is per row, not shared across the batch)."""
    g = torch.Generator().manual_seed(4)
    inputs = torch.randint(2, 64, (2, 40), generator=g)
    inputs[0, [5, 30]] = EOS
    inputs[1, [17]] = EOS
    reference, flex = logits(tiny_model("llama", "sdpa"), inputs), logits(tiny_model("llama", "flex_attention"), inputs)
    assert (flex - reference).abs().max() <= 1e-5


def test_the_default_kernel_is_flex_on_gpu_with_masking_and_sdpa_otherwise():
    assert attention_implementation(None, "cuda", doc_masking=True) == "flex_attention"
    assert attention_implementation(None, "cuda", doc_masking=False) == "sdpa"
    assert attention_implementation(None, "cpu", doc_masking=True) == "sdpa"
    assert attention_implementation("eager", "cuda", doc_masking=True) == "eager"
