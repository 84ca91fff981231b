"""Perplexity from a mean token loss, capped: the one definition every report uses (validation, sweeps, the
Pareto figure). Kept apart from cpt.eval.heldout so that reading a sweep's records needs no torch."""

from __future__ import annotations

import math

MAX_LOG_PPL = 50.0  # perplexity is reported as exp(min(loss, 50)): a diverged model gives a large number, not inf


def perplexity(loss: float) -> float:
    return math.exp(min(loss, MAX_LOG_PPL))
