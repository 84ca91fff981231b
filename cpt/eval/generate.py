"""Text from a transformers model (an export of cpt, or any): `load` it, `generate` a continuation of a prompt.

Sampling by default (temperature, top-p, top-k; greedy for argmax). When the tokenizer has a chat template the
prompt is sent as a user turn through it; `raw` continues the prompt as plain text instead (what continued
pretraining on raw documents teaches). Seeded: the same call gives the same text. `python -m cpt.generate` is the
command."""

from __future__ import annotations

import argparse

import torch

from cpt.common.errors import UserError


def load(model_path: str, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load model '{model_path}': {first} Give a directory written by cpt's export "
                        "(<run dir>/hf) or a hub id.") from e
    return model, tokenizer


@torch.no_grad()
def generate(model, tokenizer, prompt: str, args: argparse.Namespace) -> str:
    if tokenizer.chat_template and not args.raw:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    ids = ids.to(model.device)
    torch.manual_seed(args.seed)
    sampling = {} if args.greedy else {"temperature": args.temperature, "top_p": args.top_p,
                                       "top_k": args.top_k or None}
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                         repetition_penalty=args.repetition_penalty, do_sample=not args.greedy,
                         pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id, **sampling)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
