"""The training mixture: the share of every global batch that each source gets, per optimizer step.

By default a source's share is its `weight` over the sum of all weights. `data.replay` states the question of
continued pretraining directly: the first source is the domain and gets 1 - replay of every batch; the other
sources (general text replayed against forgetting) share `replay` in proportion to their weights, evenly if those
are all 0. It is what the replay x learning-rate sweep varies (conf/sweep/cpt_pareto.yaml).

`data.stages` changes the mixture during training (e.g. a final anneal stage with more replay, Parmar et al. 2024):
stage k runs until `until` x trainer.steps optimizer steps, with `weights` (by source name; unnamed sources keep
their `weight`) and `replay` (null: data.replay). The mixture is a function of the step alone, so the loader's
position stays {step, windows consumed per source} and a resume across a stage boundary is exact."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

from cpt.config.schema import DataConfig


def shares(weights: Mapping[str, float], replay: Optional[float]) -> dict[str, float]:
    """Weights (with an optional replay share for the sources after the first) as shares that sum to 1."""
    weights = {name: float(w) for name, w in weights.items()}
    if replay is not None:
        domain, *others = weights
        total = sum(weights[n] for n in others)
        weights = {domain: 1.0 - replay,
                   **{n: replay * (weights[n] / total if total > 0 else 1.0 / len(others)) for n in others}}
    total = sum(weights.values())
    return {name: w / total for name, w in weights.items()}


def source_weights(cfg: DataConfig) -> dict[str, float]:
    """Each source's share of the training samples without stages (data.sources weights and data.replay)."""
    return shares({s.name: s.weight for s in cfg.sources}, cfg.replay)


@dataclass(frozen=True)
class Mixture:
    """Stage k holds the (0-based) optimizer steps [ends[k-1], ends[k]); the last stage also runs past its end."""

    ends: tuple[int, ...]
    stages: tuple[dict[str, float], ...]

    @classmethod
    def constant(cls, weights: Mapping[str, float]) -> Mixture:
        return cls((0,), (shares(weights, None),))

    def stage_of(self, step: int) -> int:
        return min(bisect_right(self.ends, step), len(self.ends) - 1)

    def at(self, step: int) -> dict[str, float]:
        return self.stages[self.stage_of(step)]

    def drawn(self) -> set[str]:
        """The sources that some stage draws from."""
        return {name for stage in self.stages for name, share in stage.items() if share > 0}

    def describe(self) -> str:
        """E.g. 'steps 1-80: legal 0.95, general 0.05; steps 81-end: legal 0.75, general 0.25'."""
        mixes = [", ".join(f"{name} {share:.3g}" for name, share in stage.items()) for stage in self.stages]
        if len(mixes) == 1:
            return mixes[0]
        firsts = [1] + [end + 1 for end in self.ends[:-1]]
        lasts = [str(end) for end in self.ends[:-1]] + ["end"]
        return "; ".join(f"steps {a}-{b}: {mix}" for a, b, mix in zip(firsts, lasts, mixes))


def training_mixture(cfg: DataConfig, steps: int) -> Mixture:
    """The mixture of a run of `steps` optimizer steps: data.stages, or one stage of the sources' weights."""
    if not cfg.stages:
        return Mixture((steps,), (source_weights(cfg),))
    base = {s.name: s.weight for s in cfg.sources}
    return Mixture(tuple(round(stage.until * steps) for stage in cfg.stages),
                   tuple(shares({**base, **stage.weights}, cfg.replay if stage.replay is None else stage.replay)
                         for stage in cfg.stages))
