"""Held-out loss (cpt.eval.heldout), the one implementation behind in-loop validation and cpt.evaluate."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from test_loader import CPU, make_stream

from cpt.config.schema import ModelConfig
from cpt.eval.heldout import rank_windows, summed_loss, window_batches
from cpt.eval.perplexity import perplexity
from cpt.model.build import build_model


def test_ranks_get_equal_disjoint_shares_of_the_first_windows(tmp_path):
    stream = make_stream(tmp_path, "v", np.arange(16 * 11 + 1))
    shares = [rank_windows(stream, 16, r, 2, 10) for r in range(2)]
    assert shares == [range(0, 5), range(5, 10)]  # 11 windows: 5 each, the odd one left out
    starts = [[int(x[0]) for inputs, _ in window_batches(stream, w, 16, 2, CPU) for x in inputs] for w in shares]
    assert starts == [[0, 16, 32, 48, 64], [80, 96, 112, 128, 144]]
    assert rank_windows(stream, 16, 1, 2, 3) == range(3, 6)  # capped per rank


def test_summed_loss_is_the_token_sum_of_next_token_cross_entropy(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig())  # the tiny random-init model
    stream = make_stream(tmp_path, "v", np.random.default_rng(0).integers(0, 512, 8 * 7 + 1))
    total, count, nbytes = summed_loss(model, stream, range(1, 6), 8, 2, CPU).tolist()
    assert nbytes == 0  # no byte table given
    expected = 0.0
    with torch.no_grad():
        for w in range(1, 6):
            ids = torch.from_numpy(stream.read(w * 8, 9))[None]
            logits = model(input_ids=ids[:, :-1]).logits
            expected += F.cross_entropy(logits[0], ids[0, 1:], reduction="sum").item()
    assert count == 5 * 8
    assert math.isclose(total, expected, rel_tol=1e-6)
    assert model.training  # restored after scoring


def test_perplexity_is_exp_of_the_loss_capped():
    assert math.isclose(perplexity(math.log(7.0)), 7.0)
    assert perplexity(1e9) == math.exp(50.0)
