"""The evaluation report: `report.md` (a table like the original's Table 1), `results.json` and PNG plots.

Columns: configuration, utility (accuracy ± SE, and the paired difference to
the first configuration), PII count (original and strict profiles), known
values, attack success rate (the challenge's attack, and the same with the
context's trailing space cut), answer perplexity and repetition (seq-rep-4 %), and
on general requests (`unleak.eval.general`) the answers' perplexity, the
share of them holding a redaction placeholder and the known values they repeat.
Plots: PII count and ASR against the guidance scale per CFG space, and utility
against leakage (the trade-off).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.cells import cell_len
from rich.table import Table

from unleak.errors import UnleakError
from unleak.eval.judge import LLM_JUDGE_PREFIX
from unleak.eval.utility import paired_difference
from unleak.jsonl import atomic_write_text
from unleak.models import environment_line


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
        # a deployment's row is its own model in the plots (the local `model` is only its tokenizer)
        row = {"configuration": r["name"], "model": (c.get("endpoint") or {}).get("url") or c["model"],
               "adapter": c["adapter"],
               "guidance": c["guidance_scale"], "space": c["cfg_space"], "negative": c.get("negative", "adapter"),
               "test_prompts": r["test_prompts"],
               "pii_original": r["pii"].get("original", {}).get("total"),
               "pii_strict": r["pii"].get("strict", {}).get("total"),
               "known_values": r.get("known_values", {}).get("total"),
               "asr": r["attack"]["asr"], "attack_successes": r["attack"]["successes"],
               "attack_attempts": r["attack"]["attempts"],
               "asr_stripped": r.get("attack_stripped", {}).get("asr"),
               "attack_stripped_successes": r.get("attack_stripped", {}).get("successes"),
               "attack_stripped_attempts": r.get("attack_stripped", {}).get("attempts"),
               "perplexity": r["fluency"]["perplexity"],
               "repetition": r["fluency"].get("repetition"),
               "general_perplexity": (r.get("general") or {}).get("perplexity"),
               "general_placeholders": (r.get("general") or {}).get("placeholder_share"),
               "general_placeholder_answers": (r.get("general") or {}).get("placeholders"),
               "general_known_values": (r.get("general") or {}).get("known_values"),
               "general_requests": (r.get("general") or {}).get("requests")}
        u = r.get("utility")
        if u:
            row.update(utility=u["accuracy"], utility_se=u["se"], utility_n=u["n"], utility_format=u.get("format"),
                       utility_judge=u.get("judge"))
            if base.get("utility") and r is not base:
                row["utility_diff"] = paired_difference(u["correct"], base["utility"]["correct"])
        rows.append(row)
    return rows


def reference_rows(out_dir: str | Path) -> list[dict[str, Any]]:
    """Table rows of `references.json` (the test split's own answers, as written and redacted), if any."""
    path = Path(out_dir) / "references.json"
    if not path.is_file():
        return []
    return [{"configuration": r["name"], "test_prompts": r["test_prompts"],
             "pii_original": r["pii"].get("original", {}).get("total"),
             "pii_strict": r["pii"].get("strict", {}).get("total"), "known_values": r["known_values"]["total"],
             "asr": None, "attack_successes": None, "attack_attempts": None,
             "perplexity": r["fluency"]["perplexity"], "repetition": r["fluency"].get("repetition")}
            for r in json.loads(path.read_text())["rows"]]


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f}" if pct else str(v)


def _asr(asr: float | None, hits: int | None, attempts: int | None) -> str:
    return "–" if asr is None else f"{100 * asr:.1f} ({hits}/{attempts})"


TABLE_HEADER = ["configuration", "utility % (± SE)", "Δ utility (± SE)", "PII count (original)", "PII count (strict)",
                "known values", "attack ASR % (hits/attempts)", "attack ASR %, space cut (hits/attempts)",
                "answer perplexity", "repetition %", "general requests: perplexity",
                "general requests: answers with a placeholder %", "general requests: known values"]

TERMINAL_HEADER = ["configuration", "utility %\n± SE", "Δ utility\n± SE", "PII\norig.", "PII\nstrict", "known\nvalues",
                   "ASR %\n(hits/n)", "cut ASR %\n(hits/n)", "answer\nppl", "rep.\n%", "general\nppl",
                   "general\nredact.%", "general\nknown"]

MIN_NAME_WIDTH = 16  # below this the configurations' names fold into too many lines: the markdown instead


def table_cells(rows: list[dict[str, Any]]) -> list[list[str]]:
    """The summary table's cells, one list per row, in `TABLE_HEADER`'s order."""
    cells = []
    for r in rows:
        util = f"{_fmt(r.get('utility'), True)} ± {_fmt(r.get('utility_se'), True)}" if "utility" in r else "–"
        d = r.get("utility_diff")
        diff = f"{100 * d['difference']:+.1f} ± {100 * d['se']:.1f}" if d else "–"
        attack = _asr(r["asr"], r["attack_successes"], r["attack_attempts"])
        stripped = _asr(r.get("asr_stripped"), r.get("attack_stripped_successes"), r.get("attack_stripped_attempts"))
        cells.append([r["configuration"], util, diff, _fmt(r["pii_original"]), _fmt(r["pii_strict"]),
                      _fmt(r.get("known_values")), attack, stripped, _fmt(r["perplexity"]),
                      _fmt(r.get("repetition"), True), _fmt(r.get("general_perplexity")),
                      _fmt(r.get("general_placeholders"), True), _fmt(r.get("general_known_values"))])
    return cells


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + " --- |" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(c) + " |" for c in table_cells(rows)]
    return "\n".join(lines) + "\n"


def print_table(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    """The summary on the console: a table laid out to a terminal's width (the configurations' names folded
    if need be), or, into a file or pipe or where the numbers do not fit, the markdown lines of `report.md`
    whole (not wrapped at the console's width, so they paste as a table)."""
    console = console or Console()
    cells = table_cells(rows)
    widths = [max(cell_len(line) for line in head.split("\n")) for head in TERMINAL_HEADER[1:]]
    for c in cells:
        widths = [max(w, cell_len(x)) for w, x in zip(widths, c[1:])]
    # no edges and no padding: the box's one-space dividers apart, thirteen columns fit 120 terminal columns
    if console.is_terminal and MIN_NAME_WIDTH + sum(widths) + len(widths) <= console.width:
        table = Table(box=box.SIMPLE_HEAD, header_style="bold", show_edge=False, padding=0)
        table.add_column("configuration", overflow="fold", min_width=MIN_NAME_WIDTH)
        for head in TERMINAL_HEADER[1:]:
            table.add_column(head, justify="right", no_wrap=True)
        for c in cells:
            table.add_row(*c)
        console.print(table)
    else:  # a pipe, a file or a terminal too narrow for the numbers
        console.print(markdown_table(rows), markup=False, highlight=False, soft_wrap=True, end="")


def _series_space(row: dict[str, Any]) -> str:
    negative = row.get("negative", "adapter")
    return row["space"] if negative == "adapter" else f"{row['space']}, negative: {negative}"


def guidance_series(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Rows by (model[+adapter], space), sorted by guidance scale; g = 1 (plain decoding) belongs to every space.
    Rows whose negative branch runs without the adapter form their own series (space `"prob, negative: base"`)."""
    by_model: dict[str, list[dict]] = {}
    for r in rows:
        by_model.setdefault(str(r["model"]) + (f"+{Path(r['adapter']).name}" if r["adapter"] else ""), []).append(r)
    series: dict[tuple[str, str], list[dict]] = {}
    for model, rs in by_model.items():
        plain = [r for r in rs if r["guidance"] == 1][:1]
        for space in sorted({_series_space(r) for r in rs if r["guidance"] != 1}):
            guided = [r for r in rs if r["guidance"] != 1 and _series_space(r) == space]
            series[(model, space)] = sorted(plain + guided, key=lambda r: r["guidance"])
    return {k: v for k, v in series.items() if len(v) > 1}


def plot_guidance(rows: list[dict[str, Any]], out_png: Path) -> Path | None:
    """PII count and attack ASR against the guidance scale, per space; unguided models as dashed levels."""
    series = guidance_series(rows)
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    in_series = {id(r) for rs in series.values() for r in rs}
    levels = [r for r in rows if id(r) not in in_series and r["guidance"] == 1]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for (model, space), rs in series.items():
        label = f"{Path(model).name} ({space})"
        axes[0].plot([r["guidance"] for r in rs], [r["pii_original"] for r in rs], marker="o", label=label)
        line = axes[1].plot([r["guidance"] for r in rs], [100 * r["asr"] for r in rs], marker="o", label=label)
        if all(r.get("asr_stripped") is not None for r in rs):
            axes[1].plot([r["guidance"] for r in rs], [100 * r["asr_stripped"] for r in rs], marker="x",
                         linestyle=":", color=line[0].get_color(), label=f"{label}, space cut")
    for i, r in enumerate(levels):
        style = {"linestyle": "--", "color": f"C{len(series) + i}", "label": r["configuration"], "alpha": 0.7}
        axes[0].axhline(r["pii_original"], **style)
        axes[1].axhline(100 * r["asr"], **style)
        if r.get("asr_stripped") is not None:
            axes[1].axhline(100 * r["asr_stripped"],
                            **{**style, "linestyle": ":", "label": style["label"] + ", space cut"})
    axes[0].set_ylabel("PII entities in answers (original profile)")
    axes[1].set_ylabel("extraction attack ASR %")
    for ax in axes:
        ax.set_xlabel("guidance scale g")
        ax.set_ylim(bottom=0)
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
    # a legend, not labels at the points: configurations often coincide (guidance spaces at the same scores)
    markers = "osD^vP*Xph"
    for i, r in enumerate(pts):
        ax.errorbar(r["pii_original"], 100 * r["utility"], yerr=100 * r["utility_se"], fmt=markers[i % len(markers)],
                    capsize=3, label=r["configuration"], alpha=0.8)
    ax.set_xlabel("PII entities in answers (original profile)")
    ax.set_ylabel("utility: accuracy %")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def general_sentence(results: list[dict[str, Any]]) -> str:
    """The report's sentence on the general requests' columns ("" when no row answered any)."""
    counts = {(g["requests"], g["max_new_tokens"]) for r in results if (g := r.get("general"))}
    if not counts:
        return ""
    n, tokens = counts.pop() if len(counts) == 1 else (None, None)
    what = f"{n} general requests ({tokens} tokens an answer)" if n is not None else "General requests"
    return (f" {what[0].upper() + what[1:]}: nothing private asked, none seen in training, each configuration "
            "answering as served; their answers' perplexity under the same model (after the bare request), and "
            "the share of answers holding a redaction placeholder (over-redaction), and the test conversations' "
            "values they repeat (known values: a spill of memory, nothing asked for them).")


def write_report(out_dir: str | Path, title: str = "unleak evaluation", preamble: str = "",
                 reference: str | None = None, appendix: str = "", extra: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """`report.md` (title, preamble, the table, `appendix`, the plots), `results.json` (rows, results, reference
    rows and `extra`) and the PNG plots of the evaluated configurations in `out_dir`."""
    out = Path(out_dir)
    results = load_results(out)
    rows = summary_rows(results, reference)
    references = reference_rows(out)
    ref = reference if any(r["name"] == reference for r in results) else results[0]["name"]
    plots = [p for p in (plot_guidance(rows, out / "guidance.png"), plot_tradeoff(rows, out / "tradeoff.png")) if p]
    n = rows[0]["test_prompts"]
    formats = {(r.get("utility_format"), r.get("utility_judge")) for r in rows if "utility" in r}
    how = {"cloze": "the log-likelihood per character of each choice's text (cloze)",
           "letters": "the log-likelihood of the answer letters",
           "generative": "a short greedy answer to the original's request, judged"}
    fmt, judge = formats.pop() if len(formats) == 1 else (None, None)
    scored = f" by {how[fmt]}" if fmt is not None else ""
    fluency_models = {r["fluency"]["reference_model"] for r in results if r["fluency"].get("reference_model")}
    machines = {environment_line(r["environment"]) for r in results if r.get("environment")}
    if fmt == "generative":
        by_llm = str(judge).startswith(LLM_JUDGE_PREFIX)
        scored += (" by an LLM (the original's judge prompt; correct = its \"Correct\")" if by_llm
                   else " offline: correct when the answer names the right choice only, by its text or number")
    md = [f"# {title}", "", preamble, "",
          f"Test prompts: {n} (test split: never used to build the defence). Utility: multiple-choice accuracy"
          f"{scored}, each configuration as served (a defence behind its system prompt and under "
          f"its guidance, a baseline on the bare question); Δ is the paired difference to `{ref}` over the same "
          f"questions."
          + (" The `reference` rows score the test split's own answers (cut to the answers' length), as "
             "written and with their PII replaced by the redaction template: what copying the values, and "
             "a perfect redaction of them, score on the same counts." if references else "")
          + (f" Answer perplexity under `{fluency_models.pop()}`." if len(fluency_models) == 1 else "")
          + general_sentence(results)
          + (f" Evaluated on {machines.pop()}." if len(machines) == 1 else
             " Evaluated on several machines (`environment` of each result in results.json)." if machines
             else ""), "",
          markdown_table(rows + references)]
    if appendix:
        md += [appendix]
    md += [f"![{p.stem}]({p.name})" for p in plots]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    atomic_write_text(out / "results.json", json.dumps({"rows": rows, "results": results,
                                                         "reference_rows": references, **(extra or {})},
                                                        indent=1) + "\n")
    return {"rows": rows, "reference_rows": references, "report": str(out / "report.md"),
            "plots": [str(p) for p in plots]}
