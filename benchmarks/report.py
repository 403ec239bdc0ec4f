"""Result tables: one per scenario, subjects as rows, medians over rounds, ratios against the reference row.

A measurement that fails is recorded as such (the cell shows `failed`, the reason is listed under the table)
and the run goes on. Tables print as aligned text or markdown, serialize to JSON, and plot with matplotlib
when it is installed (optional extra `bench`).
"""

from __future__ import annotations

import json
import platform
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .tools import cpu_count


@dataclass(frozen=True)
class Column:
    """One metric; `ratio` adds an `x <reference>` column next to it; `better` says which way is good."""

    key: str
    title: str
    fmt: str = "{:,.0f}"
    ratio: bool = False
    better: str = "higher"


@dataclass
class Table:
    scenario: str
    title: str
    columns: list[Column]
    reference: str | None = None  # the subject ratios are computed against
    notes: list[str] = field(default_factory=list)
    runs: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # subject -> column key -> values
    errors: dict[str, dict[str, str]] = field(default_factory=dict)  # subject -> column key -> reason

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def subject(self, name: str) -> None:
        self.runs.setdefault(name, {})

    def add(self, subject: str, key: str, value: float) -> None:
        self.runs.setdefault(subject, {}).setdefault(key, []).append(value)

    def fail(self, subject: str, key: str, reason: str) -> None:
        self.runs.setdefault(subject, {})
        self.errors.setdefault(subject, {}).setdefault(key, reason.strip().replace("\n", " ")[:300])

    def median(self, subject: str, key: str) -> float | None:
        values = self.runs.get(subject, {}).get(key)
        return statistics.median(values) if values else None

    def ratio(self, subject: str, key: str) -> float | None:
        if self.reference is None:
            return None
        mine, ref = self.median(subject, key), self.median(self.reference, key)
        if mine is None or not ref:
            return None
        return mine / ref

    # Rendering

    def _header(self) -> list[str]:
        head = ["subject"]
        for c in self.columns:
            head.append(c.title)
            if c.ratio and self.reference:
                head.append(f"x {self.reference}")
        return head

    def _cells(self, subject: str) -> list[str]:
        row = [subject]
        for c in self.columns:
            value = self.median(subject, c.key)
            if value is not None:
                row.append(c.fmt.format(value))
            elif c.key in self.errors.get(subject, {}):
                row.append("failed")
            else:
                row.append("-")
            if c.ratio and self.reference:
                r = self.ratio(subject, c.key)
                row.append(f"{r:.2f}" if r is not None else "-")
        return row

    def _footer(self) -> list[str]:
        out = list(self.notes)
        for subject, errs in self.errors.items():
            for key, reason in errs.items():
                out.append(f"{subject} / {key}: {reason}")
        return out

    def text(self) -> str:
        rows = [self._header()] + [self._cells(s) for s in self.runs]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"== {self.title} =="]
        for n, r in enumerate(rows):
            lines.append(
                "  ".join(
                    cell.ljust(w) if i == 0 else cell.rjust(w)
                    for i, (cell, w) in enumerate(zip(r, widths, strict=True))
                )
            )
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines += [f"  note: {f}" for f in self._footer()]
        return "\n".join(lines)

    def markdown(self) -> str:
        head = self._header()
        lines = [f"### {self.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(self._cells(s)) + " |" for s in self.runs]
        footer = self._footer()
        if footer:
            lines.append("")
            lines += [f"- {f}" for f in footer]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        rows = []
        for subject, metrics in self.runs.items():
            rows.append(
                {
                    "subject": subject,
                    "metrics": {
                        k: {"median": statistics.median(v), "runs": v, "ratio": self.ratio(subject, k)}
                        for k, v in metrics.items()
                        if v
                    },
                    "errors": self.errors.get(subject, {}),
                }
            )
        return {
            "title": self.title,
            "reference": self.reference,
            "columns": [c.__dict__ for c in self.columns],
            "rows": rows,
            "notes": self.notes,
        }


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": cpu_count(), "cpu_model": model, "python": platform.python_version(), "kernel": platform.release()}


def write_json(path: Path, tables: list[Table], options: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine(), "options": options, "scenarios": {t.scenario: t.to_json() for t in tables}}
    path.write_text(json.dumps(doc, indent=2))


def plot(tables: list[Table], prefix: Path) -> list[Path]:
    """One PNG per scenario (bar charts of each column's medians); [] when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out = []
    for t in tables:
        cols = [c for c in t.columns if any(t.median(s, c.key) is not None for s in t.runs)]
        if not cols:
            continue
        fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 3.6), squeeze=False)
        for ax, c in zip(axes[0], cols, strict=True):
            subjects = [s for s in t.runs if t.median(s, c.key) is not None]
            ax.bar(subjects, [t.median(s, c.key) or 0.0 for s in subjects], color="#4878a8")
            ax.set_title(c.title, fontsize=9)
            ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        fig.suptitle(t.title, fontsize=10)
        fig.tight_layout()
        path = Path(f"{prefix}-{t.scenario}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        out.append(path)
    return out
