"""Document-boundary masking for packed windows (`trainer.doc_masking`, `cpt.evaluate doc_masking=`).

A training window holds the end of one document, EOS, the next document, EOS, ... With plain causal attention a
token of document 2 attends to document 1 as if it were its own context. With masking, the position ids restart at
0 after every EOS, so each document has the positions it would have alone, and attention stays within documents:
  flex_attention (the default on GPU): a BlockMask built here from the EOS positions of the micro-batch, causal
                 within each document; blocks of other documents are skipped, no dense mask exists, no host sync
  sdpa, eager    (CPU default; the reference): transformers derives a block-diagonal causal mask from the position
                 ids (a dense batch x 1 x S x S mask; it needs `attention_mask=None` and `use_cache=False`)
  flash_attention_2: transformers' varlen path from the position ids, at micro-batch size 1 only (validated)
Each document sees only itself: its logits equal those of the document run on its own (tested for every kernel that
runs on CPU).

Why: intra-document masking improves language modelling and downstream results at a small cost (Zhao et al. 2024,
"Analysing The Impact of Sequence Composition on Language Model Pre-Training"), and Llama 3 uses it for continued
pretraining on long sequences. Its cost here: BENCHMARKS.md ("Document masking").
"""

from __future__ import annotations

from typing import Optional

import torch


def document_starts(inputs: torch.Tensor, eos_id: int) -> torch.Tensor:
    """True on the first token of every document of a (batch, seq) window but its first one: the token after an EOS
    (the EOS belongs to the document it ends)."""
    starts = torch.zeros_like(inputs, dtype=torch.bool)
    starts[:, 1:] = inputs[:, :-1] == eos_id
    return starts


def document_positions(inputs: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Position ids of a (batch, seq) window that restart at 0 on the token after every EOS.

    The EOS belongs to the document it ends (it is that document's last input); a window that starts inside a
    document counts from 0 at its first token, as unmasked training does."""
    index = torch.arange(inputs.shape[1], device=inputs.device).expand_as(inputs)
    starts = document_starts(inputs, eos_id)
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - first


def document_mask(inputs: torch.Tensor, eos_id: int):
    """flex_attention's BlockMask of a (batch, seq) micro-batch: a token attends to the earlier tokens of its own
    document (documents numbered by the EOS tokens before them), on the inputs' device."""
    from torch.nn.attention.flex_attention import create_block_mask

    doc = document_starts(inputs, eos_id).cumsum(dim=1)  # each token's document number within its row

    def same_document_causal(b, h, q, kv):
        return (doc[b, q] == doc[b, kv]) & (q >= kv)

    batch, seq = inputs.shape
    return create_block_mask(same_document_causal, batch, None, seq, seq, device=inputs.device)


def masking_inputs(model: torch.nn.Module, inputs: torch.Tensor, eos_id: Optional[int]) -> dict:
    """The keyword arguments of the model's forward for masking: none without an EOS id (plain causal attention);
    document positions, and for flex_attention the document BlockMask."""
    if eos_id is None:
        return {}
    extra = {"position_ids": document_positions(inputs, eos_id)}
    if getattr(model.config, "_attn_implementation", None) == "flex_attention":
        extra["attention_mask"] = document_mask(inputs, eos_id)
    return extra
