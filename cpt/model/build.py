"""Where the model comes from: a transformers causal LM built from `model.arch` (random init) or loaded from
`model.name_or_path` (hub id or local directory). Plain modules only: parallelism is added by cpt.parallel.parallelize.

Multi-rank runs build the real model on rank 0 only; the other ranks build the same structure on the meta device
(no memory) and receive the weights from rank 0 after sharding (cpt.parallel.parallelize.load_full_state)."""

from __future__ import annotations

import logging
import math
from typing import Optional

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from cpt.common.errors import UserError
from cpt.config.schema import ModelConfig
from cpt.model.lora import add_lora
from cpt.model.tokenizer import Tokenizer
from cpt.model.vocab import extend_embeddings

log = logging.getLogger(__name__)

# a trained LM scores far below ln(vocab) on text of its language; random weights score at (or above) it
LOADED_LOSS_FRACTION = 0.75


class ModelLoadError(UserError, RuntimeError):
    """model.name_or_path cannot give the model (unreachable, missing, or not matching its config)."""


def hf_config(cfg: ModelConfig):
    if not cfg.random_init:
        return AutoConfig.from_pretrained(cfg.name_or_path)
    arch = cfg.arch
    values = {k: v for k, v in vars(arch).items() if k not in ("model_type", "extra")}
    return AutoConfig.for_model(arch.model_type, **values, **arch.extra)


def attention_implementation(requested: Optional[str], device_type: str, doc_masking: bool) -> str:
    """model.attn_implementation, or the default: flex_attention on GPU with document masking (a block-sparse
    document mask, cpt.model.doc_masking), sdpa otherwise (on CPU it is the fast one, and the masking reference)."""
    if requested is not None:
        return requested
    return "flex_attention" if device_type == "cuda" and doc_masking else "sdpa"


def build_model(cfg: ModelConfig, on_meta: bool = False, tokenizer: Optional[Tokenizer] = None,
                attn_implementation: str = "sdpa") -> nn.Module:
    """A plain fp32 causal LM on the CPU, or its empty structure on the meta device, with the embedding rows of the
    tokenizer's added tokens (model.extend_vocab, cpt.model.vocab) and LoRA adapters (model.lora, cpt.model.lora) when
    configured. The caller seeds torch so that random init (and the adapters' init) is reproducible."""
    model = load_model(cfg, on_meta, attn_implementation)
    if tokenizer is not None:
        extend_embeddings(model, tokenizer.extension)
    if cfg.lora.enabled:
        add_lora(model, cfg.lora)
        if tokenizer is not None and tokenizer.extension and not cfg.lora.train_embeddings and not on_meta:
            log.warning("model.extend_vocab with LoRA: the %d new embedding rows stay at their initial mean; "
                        "model.lora.train_embeddings=true trains the embeddings too", len(tokenizer.extension))
    return model


def load_model(cfg: ModelConfig, on_meta: bool, attn_implementation: str = "sdpa") -> nn.Module:
    kw = {"dtype": torch.float32, "attn_implementation": attn_implementation}
    try:
        if on_meta:
            with torch.device("meta"):
                return AutoModelForCausalLM.from_config(hf_config(cfg), **kw)
        if cfg.random_init:
            model = AutoModelForCausalLM.from_config(hf_config(cfg), **kw)
            log.info("model %s: random init from model.arch", cfg.name)
            return model
        model, info = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, output_loading_info=True, **kw)
    except OSError as e:
        raise ModelLoadError(
            f"could not load model '{cfg.name_or_path}' (model.name_or_path): {str(e).strip().splitlines()[0]} "
            "Offline? Download it where the hub is reachable (`hf download <id> --local-dir <dir>`) and set "
            "model.name_or_path=<dir>; HF_HUB_OFFLINE=1 skips the hub's retries."
        ) from e
    missing = [k for k in info["missing_keys"] if k not in tied_keys(model.config)]
    if missing:
        raise ModelLoadError(f"model.name_or_path={cfg.name_or_path}: {len(missing)} weights missing from the "
                           f"checkpoint and left random (e.g. {missing[:3]}): it does not match its config.json")
    log.info("model %s: pretrained weights from %s", cfg.name, cfg.name_or_path)
    return model




def tied_keys(config) -> set[str]:
    """State-dict keys that a tied lm_head shares with the input embedding (absent from checkpoints)."""
    return {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()


def check_weights_loaded(val_loss: float, vocab_size: int, cfg: ModelConfig) -> None:
    """Step-0 sanity check: pretrained weights must predict held-out text far better than uniform guessing."""
    if cfg.random_init or not cfg.check_weights_loaded:
        return
    uniform = math.log(vocab_size)
    if val_loss > LOADED_LOSS_FRACTION * uniform:
        raise RuntimeError(
            f"step-0 validation loss {val_loss:.3f} is close to ln(vocab_size={vocab_size}) = {uniform:.3f}: the "
            f"weights of '{cfg.name_or_path}' behave like a random model, so they were not loaded (or belong to "
            "another tokenizer). Check model.name_or_path and model.tokenizer; model.check_weights_loaded=false "
            "skips this check."
        )
    log.info("step-0 validation loss %.3f vs ln(vocab) %.3f: pretrained weights are in place", val_loss, uniform)






def check_vocab(model: nn.Module, tokenizer: Tokenizer, key: str = "model.tokenizer") -> None:
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise ValueError(
            f"config key '{key}': the tokenizer has {len(tokenizer)} ids but the model's embedding only {vocab}"
        )
