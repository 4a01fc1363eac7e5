"""The evaluation report: `report.md` (a table like the original's Table 1), `results.json` and PNG plots.

Columns: configuration, utility (accuracy ± SE, and the paired difference to
the first configuration), PII count (original and strict profiles), attack
success rate, answer perplexity. Plots: PII count and ASR against the guidance
scale per CFG space, and utility against leakage (the trade-off).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unleak.errors import UnleakError
from unleak.eval.utility import paired_difference
from unleak.jsonl import atomic_write_text


def load_results(out_dir: str | Path) -> list[dict[str, Any]]:
    files = sorted((Path(out_dir) / "configs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise UnleakError(f"{out_dir}: no evaluated configurations (run `unleak eval run` first)")
    return [json.loads(p.read_text()) for p in files]


def summary_rows(results: list[dict[str, Any]], reference: str | None = None) -> list[dict[str, Any]]:
    """One row per configuration; utility differences are paired against `reference` (default: the first)."""
    base = next((r for r in results if r["name"] == reference), results[0])
    rows = []
    for r in results:
        c = r["configuration"]
        row = {"configuration": r["name"], "model": c["model"], "adapter": c["adapter"],
               "guidance": c["guidance_scale"], "space": c["cfg_space"], "test_prompts": r["test_prompts"],
               "pii_original": r["pii"].get("original", {}).get("total"),
               "pii_strict": r["pii"].get("strict", {}).get("total"),
               "asr": r["attack"]["asr"], "attack_successes": r["attack"]["successes"],
               "attack_attempts": r["attack"]["attempts"], "perplexity": r["fluency"]["perplexity"]}
        u = r.get("utility")
        if u:
            row.update(utility=u["accuracy"], utility_se=u["se"], utility_n=u["n"])
            if base.get("utility") and r is not base:
                row["utility_diff"] = paired_difference(u["correct"], base["utility"]["correct"])
        rows.append(row)
    return rows


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f}" if pct else str(v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = "| configuration | utility % (± SE) | Δ utility (± SE) | PII count (original) | " \
           "PII count (strict) | attack ASR % (hits/attempts) | answer perplexity |"
    lines = [head, "|" + " --- |" * 7]
    for r in rows:
        util = f"{_fmt(r.get('utility'), True)} ± {_fmt(r.get('utility_se'), True)}" if "utility" in r else "–"
        d = r.get("utility_diff")
        diff = f"{100 * d['difference']:+.1f} ± {100 * d['se']:.1f}" if d else "–"
        lines.append(f"| {r['configuration']} | {util} | {diff} | {_fmt(r['pii_original'])} | "
                     f"{_fmt(r['pii_strict'])} | {100 * r['asr']:.1f} ({r['attack_successes']}/"
                     f"{r['attack_attempts']}) | {_fmt(r['perplexity'])} |")
    return "\n".join(lines) + "\n"


def plot_guidance(rows: list[dict[str, Any]], out_png: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((str(r["model"]) + (f"+{Path(r['adapter']).name}" if r["adapter"] else ""), r["space"]),
                          []).append(r)
    groups = {k: sorted(v, key=lambda r: r["guidance"]) for k, v in groups.items() if len(v) > 1}
    if not groups:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for (model, space), rs in groups.items():
        label = f"{Path(model).name} ({space})"
        axes[0].plot([r["guidance"] for r in rs], [r["pii_original"] for r in rs], marker="o", label=label)
        axes[1].plot([r["guidance"] for r in rs], [100 * r["asr"] for r in rs], marker="o", label=label)
    axes[0].set_ylabel("PII entities in answers (original profile)")
    axes[1].set_ylabel("extraction attack ASR %")
    for ax in axes:
        ax.set_xlabel("guidance scale g")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def plot_tradeoff(rows: list[dict[str, Any]], out_png: Path) -> Path | None:
    pts = [r for r in rows if r.get("utility") is not None]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in pts:
        ax.errorbar(r["pii_original"], 100 * r["utility"], yerr=100 * r["utility_se"], fmt="o", capsize=3)
        ax.annotate(r["configuration"], (r["pii_original"], 100 * r["utility"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("PII entities in answers (original profile)")
    ax.set_ylabel("utility: accuracy %")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def write_report(out_dir: str | Path, title: str = "unleak evaluation", preamble: str = "",
                 reference: str | None = None) -> dict[str, Any]:
    out = Path(out_dir)
    results = load_results(out)
    rows = summary_rows(results, reference)
    ref = reference if any(r["name"] == reference for r in results) else results[0]["name"]
    plots = [p for p in (plot_guidance(rows, out / "guidance.png"), plot_tradeoff(rows, out / "tradeoff.png")) if p]
    n = rows[0]["test_prompts"]
    md = [f"# {title}", "", preamble, "",
          f"Test prompts: {n} (test split: never used to build the defence). Utility: multiple-choice accuracy by "
          f"letter log-likelihood; Δ is the paired difference to `{ref}` over the same questions.", "",
          markdown_table(rows)]
    md += [f"![{p.stem}]({p.name})" for p in plots]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    atomic_write_text(out / "results.json", json.dumps({"rows": rows, "results": results}, indent=1) + "\n")
    return {"rows": rows, "report": str(out / "report.md"), "plots": [str(p) for p in plots]}
