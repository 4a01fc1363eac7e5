"""Several evaluations side by side: each configuration across runs (seeds, corpora, machines), pooled.

`compare_runs([dir, ...], out_dir)` reads the `results.json` of each run (an `unleak eval run` or
`unleak demo` output directory), keeps the configurations every run has, and writes `compare.md`,
`compare.json` and `compare.png`. Per configuration: each run's PII count (the challenge's profile) and
attack hits, and the runs pooled: PII counts and hits summed, the success rate over all attempts, the
utility difference to the reference configuration paired over all runs' questions (each question of
each run once), and the change of the pooled counts relative to the reference configuration's; on the
general requests (`unleak.eval.general`), the answers holding a placeholder pooled and the known values
each run's answers repeat.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unleak.errors import UnleakError
from unleak.eval.utility import paired_difference
from unleak.jsonl import atomic_write_text
from unleak.models import environment_line


def load_run(path: str | Path) -> dict[str, Any]:
    """A run's `results.json` (the file itself or the directory that holds it)."""
    file = Path(path)
    if file.is_dir():
        file = file / "results.json"
    if not file.is_file():
        raise UnleakError(f"{file}: not found (run `unleak eval run` or `unleak demo` there first)")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise UnleakError(f"{file}:{e.lineno}: not valid JSON ({e.msg})") from None
    for field in ("rows", "results"):
        if not isinstance(data.get(field), list):
            raise UnleakError(f"{file}: field '{field}' missing or not a list (not an unleak results file)")
    for i, row in enumerate(data["rows"]):
        for field in ("configuration", "pii_original", "attack_successes", "attack_attempts"):
            if field not in row:
                raise UnleakError(f"{file}: rows[{i}]: field '{field}' missing")
    return data


def relative_change(value: float | None, reference: float | None) -> float | None:
    """(value - reference) / reference; None where either is unknown or the reference is 0."""
    if value is None or not reference:
        return None
    return (value - reference) / reference


def _sum(values: list[int | None]) -> int | None:
    return None if any(v is None for v in values) else sum(values)


def pooled(rows: list[dict[str, Any]], corrects: list[list[bool] | None],
           reference_corrects: list[list[bool] | None]) -> dict[str, Any]:
    """One configuration's rows of several runs (and its and the reference's per-question utility
    results per run) pooled: counts summed, rates over all attempts, utility paired over all questions."""
    out: dict[str, Any] = {"pii_original": _sum([r["pii_original"] for r in rows]),
                           "pii_strict": _sum([r.get("pii_strict") for r in rows]),
                           "known_values": _sum([r.get("known_values") for r in rows])}
    for key, hits, attempts in (("attack", "attack_successes", "attack_attempts"),
                                ("attack_stripped", "attack_stripped_successes", "attack_stripped_attempts")):
        h, n = _sum([r.get(hits) for r in rows]), _sum([r.get(attempts) for r in rows])
        out[key] = None if h is None or not n else {"successes": h, "attempts": n, "asr": h / n}
    held, asked = _sum([r.get("general_placeholder_answers") for r in rows]), _sum([r.get("general_requests")
                                                                                  for r in rows])
    out["general"] = None if held is None or not asked else {
        "placeholders": held, "requests": asked, "share": held / asked,
        "known_values": _sum([r.get("general_known_values") for r in rows])}
    usable = all(c is not None and rc is not None and len(c) == len(rc) and c
                 for c, rc in zip(corrects, reference_corrects))
    if usable:
        mine = [x for c in corrects for x in c]
        theirs = [x for c in reference_corrects for x in c]
        out["utility"] = sum(mine) / len(mine)
        out["utility_diff"] = paired_difference(mine, theirs)
    return out


def compare_runs(paths: list[str | Path], out_dir: str | Path, labels: list[str] | None = None,
                 reference: str = "leaky") -> dict[str, Any]:
    """Write `compare.md`, `compare.json` and `compare.png` for the runs at `paths` into `out_dir`."""
    if len(paths) < 2:
        raise UnleakError("compare needs at least two runs")
    labels = labels or [Path(p).name if Path(p).is_dir() else Path(p).parent.name for p in paths]
    if len(labels) != len(paths) or len(set(labels)) != len(labels):
        raise UnleakError(f"labels: {len(paths)} distinct labels needed, got {labels}")
    runs = [load_run(p) for p in paths]
    names = [r["configuration"] for r in runs[0]["rows"]]
    common = [n for n in names if all(any(r["configuration"] == n for r in run["rows"]) for run in runs)]
    left_out = sorted({r["configuration"] for run in runs for r in run["rows"]} - set(common))
    if reference not in common:
        raise UnleakError(f"reference configuration {reference!r} is not in every run (common: {common})")

    def row(run: dict[str, Any], name: str) -> dict[str, Any]:
        return next(r for r in run["rows"] if r["configuration"] == name)

    def correct(run: dict[str, Any], name: str) -> list[bool] | None:
        result = next((r for r in run["results"] if r.get("name") == name), None)
        return ((result or {}).get("utility") or {}).get("correct")

    ref_corrects = [correct(run, reference) for run in runs]
    table = []
    for name in common:
        per_run = [row(run, name) for run in runs]
        entry = {"configuration": name, "runs": per_run,
                 "pooled": pooled(per_run, [correct(run, name) for run in runs], ref_corrects)}
        table.append(entry)
    ref_pooled = next(e["pooled"] for e in table if e["configuration"] == reference)
    for e in table:
        p = e["pooled"]
        e["change"] = {
            "pii_original": relative_change(p["pii_original"], ref_pooled["pii_original"]),
            "attack": relative_change(*(x["asr"] if x else None for x in (p["attack"], ref_pooled["attack"]))),
            "attack_stripped": relative_change(*(x["asr"] if x else None
                                                 for x in (p["attack_stripped"], ref_pooled["attack_stripped"])))}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"runs": [{"label": lab, "path": str(p)} for lab, p in zip(labels, paths)], "reference": reference,
               "left_out": left_out, "configurations": table}
    plot = plot_compare(table, labels, out / "compare.png")
    md = ["# unleak: runs compared", "",
          "Runs: " + "; ".join(f"{lab} ({_sizes(run)})" for lab, run in zip(labels, runs)) + ". "
          f"Per run, in this order; pooled: counts summed over the runs, success rates over all attempts, Δ "
          f"utility paired with `{reference}` over every run's questions (n: questions times runs); (Δ %) is "
          f"the pooled value's change relative to `{reference}`'s."
          + (f" Not in every run, left out: {', '.join(left_out)}." if left_out else ""), "",
          compare_table(table, reference), "", f"![{plot.stem}]({plot.name})"]
    markdown = "\n".join(md) + "\n"
    atomic_write_text(out / "compare.md", markdown)
    atomic_write_text(out / "compare.json", json.dumps(summary, indent=1) + "\n")
    return {"report": str(out / "compare.md"), "markdown": markdown, "plots": [str(plot)], **summary}


def _sizes(run: dict[str, Any]) -> str:
    """A run's sizes, and where it was evaluated when its results say so (one device and dtype)."""
    r = run["rows"][0]
    text = f"{r.get('test_prompts', '?')} test prompts, {r['attack_attempts']} attack prompts"
    machines = {environment_line(x["environment"], versions=False) for x in run["results"]
                if isinstance(x.get("environment"), dict)}
    where = f", on {machines.pop()}" if len(machines) == 1 else ""
    return text + (f", {r['utility_n']} questions" if r.get("utility_n") else "") + where


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f} %"


def compare_table(table: list[dict[str, Any]], reference: str) -> str:
    head = ("| configuration | PII per run | PII pooled (Δ %) | attack hits per run | attack ASR % pooled (Δ %) | "
            "space cut hits per run | space cut ASR % pooled (Δ %) | utility % pooled | Δ utility pooled (± SE, n) | "
            "general requests: answers with a placeholder, pooled | general requests: known values per run |")
    lines = [head, "|" + " --- |" * 11]
    for e in table:
        p, c, rs = e["pooled"], e["change"], e["runs"]

        def per_run(key: str) -> str:
            return " / ".join("–" if r.get(key) is None else str(r[key]) for r in rs)

        def rate(x: dict[str, Any] | None, change: float | None) -> str:
            return "–" if x is None else (f"{100 * x['asr']:.1f} ({x['successes']}/{x['attempts']}, "
                                          f"{_pct(change)})")

        g = p.get("general")
        general = "–" if g is None else f"{100 * g['share']:.1f} % ({g['placeholders']}/{g['requests']})"
        d = p.get("utility_diff")
        util = "–" if "utility" not in p else f"{100 * p['utility']:.1f}"
        diff = "–" if d is None or e["configuration"] == reference else \
            f"{100 * d['difference']:+.1f} ± {100 * d['se']:.1f} ({d['n']})"
        lines.append(f"| {e['configuration']} | {per_run('pii_original')} | "
                     f"{'–' if p['pii_original'] is None else p['pii_original']} ({_pct(c['pii_original'])}) | "
                     f"{per_run('attack_successes')} | {rate(p['attack'], c['attack'])} | "
                     f"{per_run('attack_stripped_successes')} | {rate(p['attack_stripped'], c['attack_stripped'])} | "
                     f"{util} | {diff} | {general} | {per_run('general_known_values')} |")
    return "\n".join(lines) + "\n"


def plot_compare(table: list[dict[str, Any]], labels: list[str], out_png: Path) -> Path:
    """PII count and attack hits per configuration, one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [e["configuration"] for e in table]
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 0.9 * len(names) + 4), 4.5), sharex=True)
    width = 0.8 / len(labels)
    for ax, key, title in ((axes[0], "pii_original", "PII count (original profile)"),
                           (axes[1], "attack_successes", "attack hits (the challenge's attack)")):
        for i, lab in enumerate(labels):
            values = [e["runs"][i].get(key) or 0 for e in table]
            ax.bar([x + i * width - 0.4 + width / 2 for x in range(len(names))], values, width, label=lab)
        ax.set_title(title)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png
