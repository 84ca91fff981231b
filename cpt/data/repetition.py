"""How often a run goes through each source, planned before the first step and counted as it goes.

A domain corpus is usually small next to a training budget: drawn past about 4 epochs, repeated tokens are worth much
less than new ones and the model starts to memorise them (Muennighoff et al. 2023, "Scaling Data-Constrained
Language Models"). The plan is the expected number of windows each source serves (each sample of a global batch is
drawn from a source with its share at that step, stages included) over the windows it has. Above
`data.warn_epochs` the run says so; above a source's `max_epochs` it refuses to start, naming the fixes (cpt never
re-weights a mixture behind the user's back)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from cpt.config.schema import ConfigError, DataConfig
from cpt.data.mixture import Mixture

log = logging.getLogger(__name__)


def planned_windows(mixture: Mixture, steps: int, global_batch: int) -> dict[str, float]:
    """Expected windows each source serves in `steps` optimizer steps."""
    out: dict[str, float] = {}
    start = 0
    for k, stage in enumerate(mixture.stages):
        end = steps if k == len(mixture.stages) - 1 else min(mixture.ends[k], steps)
        for name, share in stage.items():
            out[name] = out.get(name, 0.0) + max(0, end - start) * share * global_batch
        start = max(start, end)
    return out


def planned_epochs(mixture: Mixture, steps: int, global_batch: int, windows: Mapping[str, int]) -> dict[str, float]:
    """Planned passes over each source's training windows (0 for a source never drawn)."""
    drawn = planned_windows(mixture, steps, global_batch)
    return {name: drawn.get(name, 0.0) / count if count else 0.0 for name, count in windows.items()}


def check_repetition(cfg: DataConfig, epochs: Mapping[str, float], windows: Mapping[str, int], seq_len: int,
                     announce: bool) -> None:
    """Refuse a source planned past its max_epochs; warn above data.warn_epochs; log the plan (`announce`)."""
    caps = {s.name: s.max_epochs for s in cfg.sources if s.max_epochs is not None}
    for name, cap in caps.items():
        if epochs.get(name, 0.0) > cap:
            raise ConfigError(f"data.sources[{name}].max_epochs",
                              f"is {cap:g} but this run would go through source '{name}' {epochs[name]:.2f} times "
                              f"({windows[name] * seq_len:,} training tokens). Lower its weight (or data.replay / "
                              "the stage that favours it), add data, shorten trainer.steps, or raise max_epochs")
    if not announce:
        return
    for name, value in epochs.items():
        log.info("source %s: %s training tokens, planned %.2f epochs", name, f"{windows[name] * seq_len:,}", value)
        if value > cfg.warn_epochs and name not in caps:
            log.warning("source %s will be seen %.1f times (data.warn_epochs=%g): past ~4 epochs repeated tokens "
                        "are worth much less than new ones and the model starts to memorise them; add data, lower "
                        "its share, or set data.sources[].max_epochs to refuse such runs", name, value,
                        cfg.warn_epochs)
