"""LoRA (cpt.model.lora, model.lora): only adapter weights train and sit in the optimizer; the merged export and the
saved adapter give the adapted model's logits; 2 FSDP2 ranks give the 1-rank curve; a LoRA run killed mid-way and rerun
continues bit for bit from checkpoints that hold no frozen base weight; `cpt.export` of such a checkpoint rebuilds
the base and gives the run's own export."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from torch.distributed.checkpoint import FileSystemReader
from transformers import AutoModelForCausalLM

from conftest import TINY, assert_resumed, compose_cfg, rank_env, read_metrics, run_cli, run_tiny, train_losses
from cpt.config.schema import to_run_config
from cpt.model.build import build_model
from cpt.model.lora import merge_lora
from cpt.model.params import trainable_params
from cpt.model.tokenizer import build_tokenizer
from cpt.train.export import save_hf
from cpt.train.loop import train_step
from cpt.train.metrics import flops_per_token, matmul_params
from cpt.train.optim import build_optimizer

LORA = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8", "model.lora.dropout=0"]
FULL = pytest.mark.full  # the full tier (make test-full)
PROBE = torch.tensor([[72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]])


@pytest.fixture(scope="module")
def trained_lora():
    """The tiny model with adapters after 3 optimizer steps (B is no longer zero), and its state before them."""
    cfg = to_run_config(compose_cfg([*TINY, *LORA, "optim.weight_decay=0.1"]))
    torch.manual_seed(0)
    model = build_model(cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(model, cfg.optim)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        batch = torch.randint(0, 257, (2, 17), generator=g)
        train_step(model, optimizer, [(batch[:, :-1], batch[:, 1:])], 1, 1.0)
    return cfg, model, optimizer, before


def test_only_adapter_weights_train(trained_lora):
    cfg, model, optimizer, before = trained_lora
    after = model.state_dict()
    adapters = {k for k in after if ".lora_" in k}
    linears = 7 * cfg.model.arch.num_hidden_layers  # q k v o gate up down of every block
    assert len(adapters) == 2 * linears
    for key, value in after.items():
        if key in adapters:
            assert not torch.equal(value, before[key]) or ".lora_A." in key, key  # B starts at 0 and must move
        else:
            assert torch.equal(value, before[key]), f"frozen {key} changed"
    assert any(not torch.equal(after[k], before[k]) for k in adapters if ".lora_B." in k)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for n, p in model.named_parameters() if ".lora_" in n}
    r = cfg.model.lora.r
    expected = sum(r * (m.in_features + m.out_features) for n, m in model.named_modules()
                   if n.endswith("base_layer") and isinstance(m, torch.nn.Linear))
    assert trainable_params(model) == expected == sum(p.numel() for p in model.parameters() if p.requires_grad)
    # frozen weights get no weight gradient: 4 FLOPs per parameter and token instead of 6
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)  # tied: the embedding is the lm_head
    attention = flops_per_token(model, 32) - 6 * matmul_params(model) + 2 * frozen
    assert attention == 12 * 2 * 4 * 16 * 32


def test_merged_export_and_adapter_give_the_adapted_models_logits(trained_lora, tmp_path):
    cfg, model, _, _ = trained_lora
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=PROBE).logits
    merged, config = merge_lora(model.state_dict(), model.config, cfg.model.lora, tmp_path / "adapter", "tiny-base")
    assert not any("lora" in k or "base_layer" in k for k in merged)
    # written as the export writes it: a tied model stays tied (one matrix in the file), the caller's config unchanged
    save_hf(merged, config, None, build_tokenizer(cfg.model), tmp_path / "hf")
    assert model.config.tie_word_embeddings and json.loads((tmp_path / "hf" / "config.json").read_text())[
        "tie_word_embeddings"]
    with safe_open(tmp_path / "hf" / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in set(f.keys())
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert plain.lm_head.weight is plain.model.embed_tokens.weight
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=PROBE).logits, expected, rtol=1e-5, atol=1e-5)
    # the adapter alone, on the base model, as peft users load it
    base = AutoModelForCausalLM.from_config(model.config)
    base.load_state_dict({k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k},
                         strict=False)
    base.tie_weights()
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        "tiny-base"
    adapted = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(adapted(input_ids=PROBE).logits, expected, rtol=1e-5, atol=1e-5)


def test_an_adapter_on_the_output_projection_unties_it_and_says_so(tmp_path, caplog):
    """lm_head as a LoRA target: W + BA of the output projection is no longer the embedding, so the merged model is
    untied (and warned about), and gives the adapted model's logits."""
    cfg = to_run_config(compose_cfg([*TINY, *LORA, "model.lora.target_modules=[q_proj,lm_head]"]))
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
        expected = model.eval()(input_ids=PROBE).logits
    merged, config = merge_lora(model.state_dict(), model.config, cfg.model.lora)
    assert not config.tie_word_embeddings and "untied embeddings" in caplog.text
    save_hf(merged, config, None, build_tokenizer(cfg.model), tmp_path / "hf")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=PROBE).logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.full
def test_two_fsdp_ranks_give_the_one_rank_lora_curve(tmp_path):
    one = run_tiny(tmp_path, "one", [*LORA, "trainer.micro_batch_size=4"])
    two = run_tiny(tmp_path, "two", [*LORA, "trainer.nproc_per_node=2", "trainer.micro_batch_size=2"])
    a, b = train_losses(one), train_losses(two)
    assert a == pytest.approx(b, abs=1e-4)
    assert a[-1] < a[0]
    assert "LoRA r=4" in (one / "train.log").read_text() and "FSDP2 full_shard" in (two / "train.log").read_text()


@FULL
@pytest.mark.parametrize("fsdp", ["no_shard", "offload", "hybrid_shard"])
def test_every_strategy_gives_the_one_rank_lora_curve(tmp_path, fsdp):
    """DDP (frozen parameters are not in its buckets), CPU offload and HSDP (1 x 2 mesh) with adapters."""
    one = run_tiny(tmp_path, "one", [*LORA, "trainer.micro_batch_size=4"])
    two = run_tiny(tmp_path, fsdp, [*LORA, f"fsdp={fsdp}", "trainer.nproc_per_node=2", "trainer.micro_batch_size=2"])
    assert train_losses(two) == pytest.approx(train_losses(one), abs=1e-4)


def _checkpoint_keys(path):
    return [k for k in FileSystemReader(str(path)).read_metadata().state_dict_metadata if k.startswith("model.")]


def _curve(run_dir):
    """{step: (loss, grad norm)}; where a resumed run logged a step twice, the last record wins."""
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in read_metrics(run_dir) if "loss" in r}


@FULL
def test_lora_resume_after_sigkill_is_exact_and_checkpoints_hold_adapters_only(tmp_path):
    """With LoRA dropout on (the default 0.05): the RNG states resume too."""
    args = ["model.lora.enabled=true", "trainer.nproc_per_node=2", "trainer.micro_batch_size=2",
            "checkpoint.interval=2", "export.lora_adapter=true"]
    ref = run_tiny(tmp_path, "ref", args)
    cmd = [sys.executable, "-m", "cpt.run", *TINY, *args, f"hydra.run.dir={tmp_path / 'r'}"]
    killed = subprocess.run(cmd, cwd=tmp_path, env={**rank_env(), "CPT_FAULT_KILL": "1:3"}, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode != 0
    rerun = run_tiny(tmp_path, "r", args)  # the same command again
    assert_resumed(rerun, [2])
    assert _curve(rerun) == _curve(ref)  # exact float equality, loss and grad norm, every step
    # checkpoints: adapters only (no base weight, no tied lm_head)
    keys = _checkpoint_keys(ref / "checkpoints" / "step-00000006")
    assert keys and all(".lora_" in k for k in keys)
    # the export: merged model + adapter; cpt.export of the checkpoint rebuilds the base from the seed: same logits
    assert (ref / "hf" / "adapter" / "adapter_model.safetensors").is_file()
    proc = run_cli([str(ref / "checkpoints" / "step-00000006"), "--out", str(tmp_path / "exp")], cwd=tmp_path,
                   module="cpt.export")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "exp")
    b = AutoModelForCausalLM.from_pretrained(ref / "hf")
    with torch.no_grad():
        torch.testing.assert_close(a(input_ids=PROBE).logits, b(input_ids=PROBE).logits, rtol=0, atol=0)
    # the saved adapter, loaded by peft onto the base the run started from (random init from the run's seed), gives
    # the merged export's logits
    from omegaconf import OmegaConf

    from cpt.config.schema import to_run_config
    from cpt.model.build import build_model

    run_cfg = to_run_config(OmegaConf.load(ref / "config.yaml"))
    torch.manual_seed(run_cfg.trainer.seed)
    base = build_model(dataclasses.replace(run_cfg.model, lora=dataclasses.replace(run_cfg.model.lora,
                                                                                    enabled=False)))
    adapted = PeftModel.from_pretrained(base, ref / "hf" / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(adapted(input_ids=PROBE).logits, b(input_ids=PROBE).logits, rtol=1e-5, atol=1e-5)
