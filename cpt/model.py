"""Where the model and tokenizer come from: a transformers causal LM built from `model.arch` (random init) or
loaded from `model.name_or_path`, and a tokenizer (the built-in byte-level one, or a transformers tokenizer).
Plain modules only: parallelism is added later by cpt.parallelize."""

from __future__ import annotations

import logging
from typing import List, Protocol

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from cpt.config import ModelConfig

log = logging.getLogger(__name__)


class Tokenizer(Protocol):
    eos_token_id: int

    def encode(self, text: str) -> List[int]: ...

    def decode(self, ids: List[int]) -> str: ...

    def __len__(self) -> int: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255 and an end-of-text id 256: needs no files, fits any vocab >= 257."""

    eos_token_id = 256

    def encode(self, text: str) -> List[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: List[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def __len__(self) -> int:
        return 257


class HFTokenizer:
    """A transformers tokenizer that encodes without adding special tokens (documents are joined by EOS)."""

    def __init__(self, source: str):
        self.inner = AutoTokenizer.from_pretrained(source)
        if self.inner.eos_token_id is None:
            raise ValueError(f"tokenizer '{source}' has no EOS token; cpt needs one to separate documents")
        self.eos_token_id = self.inner.eos_token_id

    def encode(self, text: str) -> List[int]:
        return self.inner.encode(text, add_special_tokens=False)

    def decode(self, ids: List[int]) -> str:
        return self.inner.decode(ids)

    def __len__(self) -> int:
        return len(self.inner)


def build_tokenizer(cfg: ModelConfig) -> Tokenizer:
    source = cfg.tokenizer or cfg.name_or_path
    if source == "byte":
        return ByteTokenizer()
    try:
        return HFTokenizer(source)
    except OSError as e:
        raise RuntimeError(
            f"could not load tokenizer '{source}' (model.tokenizer / model.name_or_path): {e}. "
            "Offline? Point model.tokenizer at a local directory, or use model.tokenizer=byte."
        ) from e


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
