"""model: the plain (unparallelized) causal LM and what defines its outputs — building or loading it (`build`),
its parameters (`params`), its tokenizer (`tokenizer`), LoRA adapters (`lora`), vocabulary extension (`vocab`), the
next-token loss (`loss`, chunked through the lm_head) and document-boundary masking (`doc_masking`). May import
cpt.common, cpt.assets and cpt.config."""
