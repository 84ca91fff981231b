"""Where the model comes from: a transformers causal LM built from `model.arch` (random init) or loaded from
`model.name_or_path`. Plain modules only: parallelism is added later by cpt.parallelize."""

from __future__ import annotations

import logging
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from cpt.config import ModelConfig
from cpt.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def hf_config(cfg: ModelConfig):
    arch = cfg.arch
    values = {k: v for k, v in vars(arch).items() if k not in ("model_type", "extra")}
    return AutoConfig.for_model(arch.model_type, **values, **arch.extra)


def build_model(cfg: ModelConfig) -> nn.Module:
    """A plain fp32 causal LM on the CPU; the caller seeds torch so that every rank builds the same weights."""
    if cfg.random_init:
        model = AutoModelForCausalLM.from_config(hf_config(cfg), dtype=torch.float32)
        log.info("model %s: random init from model.arch", cfg.name)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, dtype=torch.float32)
        except OSError as e:
            raise RuntimeError(
                f"could not load model '{cfg.name_or_path}' (model.name_or_path): {e}. Offline? Point "
                "model.name_or_path at a local directory holding config.json and *.safetensors."
            ) from e
        log.info("model %s: pretrained weights from %s", cfg.name, cfg.name_or_path)
    return model


def count_params(model: nn.Module) -> int:
    """Unique parameters (a tied embedding / lm_head counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def check_vocab(model: nn.Module, tokenizer: Tokenizer, key: str = "model.tokenizer") -> None:
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise ValueError(
            f"config key '{key}': the tokenizer has {len(tokenizer)} ids but the model's embedding only {vocab}"
        )
