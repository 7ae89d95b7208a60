"""What a query and mixture amount to (explain) and what a job delivered so far (report)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ComponentInfo:
    key: str
    values: dict[str, Any]
    samples: int
    files: int
    intervals: int
    mixture_key: str | None = None  # the mixture key it falls under (None: unmatched / no mixture)
    weight: float | None = None  # requested share (of tokens in token mode)
    tokens: float | None = None  # estimated tokens available
    epochs: float | None = None  # passes over the component that the budget implies
    dry_step: float | None = None  # training step at which one pass is used up


@dataclass
class Explanation:
    """What a query selects: samples per component, and with a mixture, what the mixture asks of it."""

    properties: list[str]
    components: list[ComponentInfo] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unit: str = "samples"  # unit of the budget: samples or tokens
    # token mode: "exact (token index)" or "estimated" (from sizes in bytes); None in sample mode
    token_counts: str | None = None

    @property
    def total_samples(self) -> int:
        return sum(c.samples for c in self.components)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (the wire format of ``Explain``; ``mixtera explain --json``)."""
        return {
            "properties": list(self.properties),
            "components": [asdict(c) for c in self.components],
            "warnings": list(self.warnings),
            "unit": self.unit,
            "token_counts": self.token_counts,
        }

    def __str__(self) -> str:
        if not self.components:
            return "the query selects no samples"
        mixed = any(c.weight is not None for c in self.components)
        width = max(len(c.key) for c in self.components)
        head = f"{'component':<{width}}  {'samples':>10}  {'share':>7}  {'files':>6}  {'intervals':>9}"
        if mixed:
            head += f"  {'weight':>7}"
            if any(c.tokens is not None for c in self.components):
                head += f"  {'tokens':>12}"
            if any(c.epochs is not None for c in self.components):
                head += f"  {'epochs':>8}"
            if any(c.dry_step is not None for c in self.components):
                head += f"  {'dry at step':>12}"
        lines = [head]
        total = self.total_samples
        for c in self.components:
            share = c.samples / total if total else 0.0
            line = f"{c.key:<{width}}  {c.samples:>10}  {share:>7.2%}  {c.files:>6}  {c.intervals:>9}"
            if mixed:
                line += f"  {c.weight or 0.0:>7.2%}"
                if c.tokens is not None:
                    line += f"  {c.tokens:>12,.0f}"
                if c.epochs is not None:
                    line += f"  {c.epochs:>8.3f}"
                if c.dry_step is not None:
                    line += f"  {_fmt_step(c.dry_step):>12}"
            lines.append(line)
        lines.append(f"{'total':<{width}}  {total:>10}")
        if self.token_counts is not None and mixed:
            lines.append(f"tokens: {self.token_counts}")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def _fmt_step(step: float) -> str:
    return "never" if math.isinf(step) else f"{step:,.0f}"


@dataclass
class JobReport:
    """Target vs delivered share per mixture key, for the streams this process has run."""

    job_id: str
    unit: str  # "samples" or "tokens"
    keys: list[str]
    target: list[float]  # weight per key in force now
    delivered: list[int]  # samples or tokens handed out per key
    changes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def delivered_share(self) -> list[float]:
        total = sum(self.delivered)
        return [d / total if total else 0.0 for d in self.delivered]

    def __str__(self) -> str:
        width = max([len(k) for k in self.keys] + [3])
        lines = [
            f"job {self.job_id}: {sum(self.delivered):,} {self.unit} delivered",
            f"{'key':<{width}}  {'target':>8}  {'delivered':>9}  {self.unit:>12}",
        ]
        for k, t, s, d in zip(self.keys, self.target, self.delivered_share, self.delivered, strict=True):
            lines.append(f"{k:<{width}}  {t:>8.2%}  {s:>9.2%}  {d:>12,}")
        for ch in self.changes:
            lines.append(f"mixture change at chunk {ch['chunk']} (step {ch.get('step')}): {ch.get('reason')}")
        return "\n".join(lines)

    def plot(self, path: str) -> str:
        """A bar chart of target vs delivered shares, written as PNG (needs matplotlib)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise ImportError("JobReport.plot needs matplotlib: pip install 'mixtera[plot]'") from e
        fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(self.keys) + 2), 3.5))
        xs = range(len(self.keys))
        ax.bar([x - 0.2 for x in xs], self.target, width=0.4, label="target")
        ax.bar([x + 0.2 for x in xs], self.delivered_share, width=0.4, label=f"delivered ({self.unit})")
        ax.set_xticks(list(xs), self.keys, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("share")
        ax.set_title(f"job {self.job_id}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
