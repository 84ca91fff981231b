"""Document-boundary masking for packed windows (`trainer.doc_masking`, `cpt.evaluate doc_masking=`).

A training window holds the end of one document, EOS, the next document, EOS, ... With plain causal attention a
token of document 2 attends to document 1 as if it were its own context. With masking, the position ids restart at
0 after every EOS; transformers (5.x) then derives from them that the window holds several sequences and builds a
block-diagonal causal mask for sdpa and eager attention (the model must run with `attention_mask=None` and
`use_cache=False`), and flash-attention-2 takes its variable-length path on GPU. Each document sees only itself, at
the positions it would have alone: its logits equal those of the document run on its own.

Why: intra-document masking improves language modelling and downstream results at a small cost (Zhao et al. 2024,
"Analysing The Impact of Sequence Composition on Language Model Pre-Training"), and Llama 3 uses it for continued
pretraining on long sequences. Its cost here: BENCHMARKS.md ("Document masking").
"""

from __future__ import annotations

from typing import Optional

import torch


def document_positions(inputs: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Position ids of a (batch, seq) window that restart at 0 on the token after every EOS.

    The EOS belongs to the document it ends (it is that document's last input); a window that starts inside a
    document counts from 0 at its first token, as unmasked training does."""
    index = torch.arange(inputs.shape[1], device=inputs.device).expand_as(inputs)
    starts = torch.zeros_like(inputs, dtype=torch.bool)
    starts[:, 1:] = inputs[:, :-1] == eos_id
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - first


def position_ids(inputs: torch.Tensor, eos_id: Optional[int]) -> Optional[torch.Tensor]:
    """The position ids to pass to the model: document positions when masking (an EOS id given), None otherwise
    (the model's own 0..seq-1)."""
    return None if eos_id is None else document_positions(inputs, eos_id)
