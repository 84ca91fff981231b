"""A sharded training model -> a transformers model directory that `AutoModelForCausalLM.from_pretrained` loads:
model.safetensors, config.json, generation_config.json and the tokenizer. Optionally uploaded to the hub.

All ranks take part in gathering the full state dict (to CPU, rank 0 only); rank 0 writes it into a fresh plain
model of the same config, so nothing of FSDP (DTensors, wrappers, compile or checkpoint prefixes) reaches the files.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from cpt.common import faults
from cpt.config.schema import RunConfig, to_run_config
from cpt.model.build import build_model, tied_keys
from cpt.model.lora import has_lora, merge_lora
from cpt.model.tokenizer import Tokenizer, build_tokenizer
from cpt.train.checkpoint import clean_name, resolve_resume
from cpt.train.safe_load import load_dcp

log = logging.getLogger(__name__)

def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The full, unsharded state dict on rank 0's CPU (None on the other ranks); keys as in the plain model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    return {clean_name(key): value for key, value in state.items()}


def save_hf(state: dict[str, torch.Tensor], config, generation_config, tokenizer: Tokenizer, out: Path) -> None:
    """Write a model directory atomically (a temporary name, renamed when complete)."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in tied_keys(config)]
    if missing or unexpected:
        raise RuntimeError(f"export: state dict does not fit {type(plain).__name__}: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    plain.generation_config = generation_config or GenerationConfig()
    if plain.generation_config.eos_token_id is None:
        plain.generation_config.eos_token_id = tokenizer.eos_token_id
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


@dataclass
class PendingExport:
    """What rank 0 needs to write the export once the ranks are gone: the gathered state and the model's configs."""

    state: dict[str, torch.Tensor]
    config: Any
    generation_config: Any
    tokenizer: Tokenizer
    out: Path
    cfg: RunConfig

    def write(self) -> Path:
        """Rank 0, after the process group is closed: slow single-rank work (building a plain model, writing
        safetensors, a hub upload) never keeps the other ranks waiting in a collective (and timing out)."""
        faults.maybe_slow_export()
        out, cfg, state, config = self.out, self.cfg, self.state, self.config
        adapter = out.with_name(f".{out.name}.adapter") if cfg.export.lora_adapter else None
        if adapter is not None:
            shutil.rmtree(adapter, ignore_errors=True)
        if has_lora(state):
            state, config = merge_lora(state, config, cfg.model.lora, adapter, cfg.model.name_or_path)
        save_hf(state, config, self.generation_config, self.tokenizer, out)
        if adapter is not None:
            adapter.rename(out / "adapter")
        log.info("exported a transformers model directory to %s", out)
        if cfg.export.push_to_hub:
            push(out, cfg.export.push_to_hub, cfg.export.private)
        return out


def gather_export(model: nn.Module, tokenizer: Tokenizer, out: Path, cfg: RunConfig) -> Optional[PendingExport]:
    """Collective: every rank calls it; rank 0 gets the full state (on CPU) to write with PendingExport.write once
    the process group is gone, the other ranks None."""
    state = plain_state_dict(model)
    if state is None:
        return None
    return PendingExport(state, model.config, getattr(model, "generation_config", None), tokenizer, out, cfg)


def push(folder: Path, repo_id: str, private: bool) -> str:
    """Upload an exported directory to the hub; fails with what to do when the hub is unreachable."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="cpt export")
    except Exception as e:  # network, auth and permission errors all come here
        raise RuntimeError(
            f"export.push_to_hub={repo_id}: upload failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            f"The export itself is complete at {folder}; upload it later with `hf upload {repo_id} {folder}` "
            "once the hub is reachable and you are logged in (`hf auth login` or HF_TOKEN)."
        ) from e
    log.info("pushed %s to the hub: %s", folder, info)
    return str(info)


def export_checkpoint(path: Path, out: Optional[Path] = None) -> Path:
    """Any complete checkpoint (or a run directory: its latest) -> a transformers model directory, in one process,
    without the run's ranks: DCP reassembles the full tensors from the shards."""
    from omegaconf import OmegaConf
    from transformers import GenerationConfig

    ckpt = resolve_resume(str(path), path)
    out = out or ckpt.parent.parent / f"hf-{ckpt.name}"
    cfg = to_run_config(OmegaConf.load(ckpt / "config.yaml"))
    tokenizer = build_tokenizer(cfg.model)
    lora = cfg.model.lora.enabled
    # LoRA checkpoints hold the trainable parameters only: the base is built as the run built it (weights from
    # model.name_or_path, or the run's seed for a random init); otherwise an empty structure is filled from the shards
    torch.manual_seed(cfg.trainer.seed)
    model = build_model(cfg.model, on_meta=not lora, tokenizer=tokenizer)
    if not lora:
        model.to_empty(device="cpu")
        model.tie_weights()
    params = model.state_dict(keep_vars=True)
    state = {"model": {k: v.detach() for k, v in params.items() if not lora or v.requires_grad}}
    load_dcp(state, ckpt)  # into the model's own tensors, in place; nothing in the files can run code
    full, config = model.state_dict(), model.config
    if lora:
        full, config = merge_lora(full, config, cfg.model.lora)
    generation = None
    if not cfg.model.random_init:
        try:
            generation = GenerationConfig.from_pretrained(cfg.model.name_or_path)
        except OSError:
            pass
    save_hf(full, config, generation, tokenizer, out)
    log.info("exported checkpoint %s to %s", ckpt, out)
    return out
