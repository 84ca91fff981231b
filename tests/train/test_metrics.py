"""FLOPs per token, the peak-FLOPS table and MFU."""

from __future__ import annotations

import pytest
import torch

from conftest import compose_cfg
from cpt.config.schema import to_run_config
from cpt.model.build import build_model
from cpt.model.params import count_params
from cpt.train.metrics import PEAK_FLOPS, Throughput, flops_per_token, peak_flops


@pytest.mark.parametrize("tied", [True, False])
def test_flops_per_token_counts_matmul_parameters_and_attention(tied):
    """Tied: the embedding matrix is used once, as the lm_head (a lookup is no matmul); untied: the lm_head counts,
    the input embedding does not."""
    cfg = to_run_config(compose_cfg(["model=tiny", f"model.arch.tie_word_embeddings={tied}"]))
    model = build_model(cfg.model)
    a = cfg.model.arch
    blocks = count_params(model) - a.vocab_size * a.hidden_size * (1 if tied else 2)  # decoder layers + final norm
    n = blocks + a.vocab_size * a.hidden_size
    attention = 12 * a.num_hidden_layers * a.num_attention_heads * (a.hidden_size // a.num_attention_heads) * 128
    assert flops_per_token(model, 128) == 6 * n + attention


def test_qwen05b_flops_per_token():
    cfg = to_run_config(compose_cfg(["model=qwen0.5b", "model.random_init=true"]))
    with torch.device("meta"):
        model = build_model(cfg.model)
    assert count_params(model) == 494_032_768
    assert flops_per_token(model, 2048) == 6 * 494_032_768 + 12 * 24 * 14 * 64 * 2048 == 3_492_678_912


def test_peak_flops_known_unknown_and_configured():
    assert peak_flops(torch.device("cpu"), torch.float32, None) is None  # never silently assumed
    assert peak_flops(torch.device("cpu"), torch.float32, 1e11) == 1e11
    assert PEAK_FLOPS["H100"]["bf16"] == 989e12 and PEAK_FLOPS["H100 PCIe"]["bf16"] == 756e12
    # specific names must come before their prefixes, or "H100 PCIe" would match "H100"
    keys = list(PEAK_FLOPS)
    for i, k in enumerate(keys):
        for later in keys[i + 1:]:
            assert k not in later, f"{later} listed after its prefix {k}"


def test_mfu_is_throughput_times_flops_over_peak():
    t = Throughput(flops_per_token=1e6, peak=1e10, world_size=2)
    t.add(10_000)
    t.elapsed = 0.0
    t.start -= 1.0  # pretend one second of training
    r = t.report()
    assert r["tokens_per_s"] == pytest.approx(10_000, rel=0.01)
    assert r["mfu"] == pytest.approx(10_000 * 1e6 / 2e10, rel=0.01)
    assert Throughput(1e6, None, 1).report()["mfu"] is None
