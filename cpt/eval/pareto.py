"""Domain gain against general forgetting, per job of a sweep: the question of continued pretraining as one figure.

For every job, from its own validation records (metrics.jsonl): step 0 is the base model, the last validation is
the trained one.
  domain gain   = 1 - ppl_end / ppl_0 on the domain source (the first source unless told): the share of the base
                  model's perplexity that training removed; > 0 is better.
  forgetting    = ppl_end / ppl_0 - 1 on each other source, averaged over them: how much worse the model got at the
                  text it was not trained for; > 0 is forgetting, < 0 means that text improved too.
A job is on the Pareto front when no other job has at least its gain with at most its forgetting (one of them
strictly better). The best trade-off is the front job with the largest gain among those whose forgetting is at most
`max_forgetting`; when none is, there is no best job and the report says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from cpt.eval.perplexity import perplexity


def gain_and_forgetting(val: dict[int, dict], domain: str) -> Optional[dict]:
    """From {step: validation record} with per-source losses (`val_loss/<source>`): the domain gain, the mean
    forgetting and each other source's forgetting, between step 0 and the last validation. None when the job has
    no step-0 validation, no later one, or no per-source losses (a single-source run)."""
    if 0 not in val or max(val) == 0:
        return None
    first, last = val[0], val[max(val)]
    sources = [k.split("/", 1)[1] for k in first if k.startswith("val_loss/") and k in last]
    if domain not in sources:
        return None
    change = {s: perplexity(last[f"val_loss/{s}"]) / perplexity(first[f"val_loss/{s}"]) - 1 for s in sources}
    others = {s: c for s, c in change.items() if s != domain}
    return {"domain": domain, "domain_gain": -change[domain],
            "forgetting": sum(others.values()) / len(others) if others else None,
            "forgetting_by_source": others}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (forgetting, gain) points that no other point dominates (at most its forgetting and at least
    its gain, one of them strictly)."""
    front = []
    for i, (f, g) in enumerate(points):
        dominated = any((f2 <= f and g2 >= g) and (f2 < f or g2 > g) for j, (f2, g2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def best_tradeoff(points: list[tuple[float, float]], front: list[int], max_forgetting: float) -> Optional[int]:
    """The front point with the largest gain whose forgetting is at most `max_forgetting`, or None."""
    allowed = [i for i in front if points[i][0] <= max_forgetting]
    return max(allowed, key=lambda i: points[i][1]) if allowed else None


def plot_pareto(names: list[str], labels: list[str], points: list[tuple[float, float]], front: list[int],
                best: Optional[int], max_forgetting: float, domain: str, path: Path) -> None:
    """pareto.png: forgetting (x) against domain gain (y), in percent; every job a point marked with its name and
    listed with its label (what it varies) beside the plot, the front as a line, the forgetting bound dashed, the
    best trade-off starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, ys = [100 * f for f, _ in points], [100 * g for _, g in points]
    fig, ax = plt.subplots(figsize=(10, 5.5))
    ax.scatter(xs, ys, s=36, color="tab:blue", zorder=3, label="job")
    for x, y, name in zip(xs, ys, names):
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    on_front = sorted(front, key=lambda i: points[i][0])
    ax.plot([xs[i] for i in on_front], [ys[i] for i in on_front], color="tab:orange", linewidth=1.5, zorder=2,
            label="Pareto front")
    ax.axvline(100 * max_forgetting, color="grey", linestyle="--", linewidth=1,
               label=f"forgetting bound {100 * max_forgetting:g}%")
    if best is not None:
        ax.scatter([xs[best]], [ys[best]], marker="*", s=320, color="tab:red", zorder=4,
                   label=f"best trade-off: job {names[best]}")
    ax.set_xlabel("forgetting: mean perplexity rise on the other sources (%)")
    ax.set_ylabel(f"domain gain: perplexity drop on '{domain}' (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    key = "\n".join(f"{name}: {label}" for name, label in sorted(zip(names, labels), key=lambda p: (len(p[0]), p[0])))
    fig.text(0.75, 0.5, key, fontsize=8, va="center", family="monospace")
    fig.tight_layout(rect=(0, 0, 0.74, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
