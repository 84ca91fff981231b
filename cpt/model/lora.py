"""LoRA (`model.lora`): low-rank adapters injected with peft into the plain transformers module, before it is
parallelized. The module keeps its class (config, embeddings, decoder blocks: everything cpt.parallel.parallelize and
the chunked loss rely on); each targeted nn.Linear becomes a peft LoRA layer holding the frozen base weight and the
trainable A (r x in) and B (out x r, zero at start) matrices, so training starts from the base model exactly.

Only adapter parameters (and the embeddings with `train_embeddings`) require grad: they alone get gradients and
optimizer state; FSDP2 shards frozen and trainable parameters alike (per-parameter sharding, no flat buffer that
would need one requires_grad). Checkpoints hold the trainable parameters only (the base comes from
model.name_or_path, or the seed for a random init); the export merges W + (alpha / r) B A into a plain
transformers model and can also save the adapter alone as a peft directory (export.lora_adapter).
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from cpt.config.schema import ConfigError, LoraConfig
from cpt.model.params import count_params, decoder_layers, trainable_params

log = logging.getLogger(__name__)


def peft_config(cfg: LoraConfig, model: nn.Module):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=target_modules(model, cfg), bias="none")


def target_modules(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """The configured module names, or the names of every nn.Linear inside the decoder blocks."""
    found = sorted({name.rsplit(".", 1)[-1] for layer in decoder_layers(model)
                    for name, m in layer.named_modules() if isinstance(m, nn.Linear)})
    if cfg.target_modules is None:
        return found
    unknown = sorted(set(cfg.target_modules) - {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()})
    if unknown:
        raise ConfigError("model.lora.target_modules", f"{unknown} name no module of {type(model).__name__} "
                          f"(its decoder blocks' linear layers: {found})")
    return list(cfg.target_modules)


def add_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Inject adapters in place (meta-device models too) and freeze everything else; returns the same module."""
    from peft import inject_adapter_in_model

    config = peft_config(cfg, model)
    inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad = "lora_" in name
    if cfg.train_embeddings:
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            if module is not None:
                module.weight.requires_grad = True
    trainable, total = trainable_params(model), count_params(model)
    if not next(model.parameters()).is_meta:
        log.info("LoRA r=%d alpha=%g on %s: %s trainable parameters of %s (%.2f%%)", cfg.r, cfg.alpha,
                 ",".join(sorted(config.target_modules)), f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return model


def has_lora(state: dict[str, torch.Tensor]) -> bool:
    return any(".lora_A." in key for key in state)


def merge_lora(state: dict[str, torch.Tensor], config, cfg: LoraConfig, adapter_dir: Path | None = None,
               base_name: str | None = None) -> tuple[dict[str, torch.Tensor], object]:
    """A full state dict of an adapted model -> (the plain model's state dict with W + (alpha / r) B A merged in
    (peft's merge_and_unload), its config); `adapter_dir`: also save the adapter alone, as
    `PeftModel.from_pretrained` loads it.
    A tied model stays tied (one matrix, tie_word_embeddings kept): the lm_head is re-tied to the embedding before
    merging, so peft unties them only when an adapter really changed one of them (lm_head in target_modules). The
    caller's config is never modified (peft writes tie_word_embeddings into the config it merges)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(config)
    tied = getattr(config, "tie_word_embeddings", False)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    peft_model = get_peft_model(plain, peft_config(cfg, plain)).to_empty(device="cpu")
    inner = peft_model.base_model.model
    if not hasattr(inner.get_output_embeddings(), "lora_A"):  # unless adapted, the lm_head is the embedding again
        inner.tie_weights()  # (to_empty gave the tied lm_head a tensor of its own)
    # copied, not assigned: merging adds into the base weights, which must not be the caller's tensors
    missing, unexpected = inner.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"export: the LoRA state dict does not fit {type(plain).__name__} with adapters: missing "
                           f"{missing[:5]}, unexpected {unexpected[:5]}")
    if adapter_dir is not None:
        peft_model.peft_config["default"].base_model_name_or_path = base_name
        # embeddings trained in full (train_embeddings) are part of the adapter
        with warnings.catch_warnings():  # peft reads a deprecated transformers attribute while saving
            warnings.filterwarnings("ignore", category=FutureWarning)
            peft_model.save_pretrained(adapter_dir, save_embedding_layers=cfg.train_embeddings)
        log.info("saved the LoRA adapter to %s", adapter_dir)
    merged = peft_model.merge_and_unload()
    if tied and not merged.config.tie_word_embeddings:
        log.warning("the LoRA adapter of the output projection makes it differ from the input embedding: the merged "
                    "model has untied embeddings (tie_word_embeddings=false, one more embedding-sized matrix)")
    return merged.state_dict(), merged.config
