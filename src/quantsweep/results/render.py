"""A leaderboard as files: CSV, Markdown, JSON and a self-contained HTML page with the accuracy-vs-size plot.

`export` writes them (the plot always), `log_to_run` attaches them to a run (a sweep's parent), so a
sweep's result can be read without re-querying the store. Every table ends with the rules it was
computed by, the recovery stderr's method as the rows' runs logged it.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from quantsweep import tables, tracking
from quantsweep.results import kv
from quantsweep.results.rank import GPU_RULE, PARETO_RULE, TIE_RULE, adjusted, comparable, suite_tasks

FORMATS = ("csv", "md", "html", "json")
# What export writes, so log_to_run attaches these files and nothing else lying in the folder.
STEM = "leaderboard"
PLOT_STEM = "accuracy_vs_size"

# How a point's recovery stderr was computed, by its tag quantsweep.recovery_stderr (see pipeline).
RECOVERY_METHODS = {
    "paired": "the delta-method stderr of mean(q)/mean(b) over the items both runs scored, with half an "
    "item added to each agree/disagree cell for scores in [0, 1] (Agresti-Min), so that full agreement on "
    "n items reads as about 1/n, not as certainty",
    "independent": "both accuracies' stderrs propagated to first order, as if uncorrelated "
    "(no per-item scores to pair)",
}


def _text(value: Any) -> str:
    return "-" if value is None or pd.isna(value) else str(value)


def _num(value: Any, digits: int) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def _gib(value: float) -> str:
    """Three significant digits, so a small model's sizes do not all print as 0.00."""
    return "-" if pd.isna(value) else f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _verdict(row: pd.Series) -> str:
    if pd.isna(row["passed"]):
        return "-"
    word = "pass" if row["passed"] else "FAIL"
    on = row["floor_on"]
    if on == "accuracy":
        return f"{word} (≥ {row['floor']:.3f} acc)"
    what = "" if on == "recovery" else f"{str(on).removeprefix('task:')} "
    return f"{word} ({what}≥ {row['floor']:.0%})"


def _task_cell(row: pd.Series, task: str) -> str:
    """A task's score, and a point's recovery ± stderr beside it: `0.405 (98.3 ± 1.1%)`."""
    score = tables.pm(row.get(f"score:{task}"), None, 3)
    if row["role"] == "baseline" or tables.missing(row.get(f"recovery_pct:{task}")):
        return score
    recovery = tables.pm(row[f"recovery_pct:{task}"], row.get(f"recovery_pct_stderr:{task}"), 1, unit="%")
    return f"{score} ({recovery})"


def _suite_columns(df: pd.DataFrame) -> list[tuple[str, bool, Callable[[pd.Series], str]]]:
    """Mean and worst recovery over the suite, then each task's column."""
    tasks = suite_tasks(df)
    if not tasks:
        return []

    def worst(r: pd.Series) -> str:
        cell = tables.pm(r["recovery_worst_pct"], r["recovery_worst_pct_stderr"], 1, unit="%")
        return cell if r["role"] == "baseline" else f"{cell} {_text(r['worst_task'])}"

    columns: list[tuple[str, bool, Callable[[pd.Series], str]]] = [
        (
            "mean rec.",
            False,
            lambda r: tables.pm(r["recovery_mean_pct"], r["recovery_mean_pct_stderr"], 1, unit="%"),
        ),
        ("worst rec.", False, worst),
    ]
    return columns + [(task, False, lambda r, t=task: _task_cell(r, t)) for task in tasks]


def _numbers(df: pd.DataFrame) -> dict[str, str]:
    """Rows are numbered #1… so a tie or a note reads #k, unambiguous even when two rows share a label."""
    return {run: f"#{i + 1}" for i, run in enumerate(df["run_id"])}


def _vllm_cell(row: pd.Series) -> str:
    """✓ when vLLM loads and runs the checkpoint, ✗ and its reason when not, - where no check ran."""
    verdict = _text(row["vllm"])
    return "✓" if verdict == "loads" else verdict.replace("fails:", "✗", 1)


def _table(df: pd.DataFrame) -> tuple[list[tuple[str, bool]], list[list[str]]]:
    """(title, is text) per column and the cells, shared by the Markdown and HTML tables."""
    number = _numbers(df)
    metric = "/".join(sorted(set(df.loc[comparable(df), "metric"].dropna()))) or "accuracy"
    columns: list[tuple[str, bool, Callable[[pd.Series], str]]] = [
        ("#", True, lambda r: number[r["run_id"]]),
        ("model", True, lambda r: _text(r["model"])),
        ("scheme", True, lambda r: _text(r["scheme"])),
        ("algorithm", True, lambda r: _text(r["algorithm"])),
        ("group", True, lambda r: _text(r["group_size"])),
        ("ignore", True, lambda r: _text(r["ignore"])),
        ("GiB", False, lambda r: _gib(r["disk_gib"])),
        ("×", False, lambda r: _num(r["compression"], 2)),
        ("bits/w", False, lambda r: _num(r["bits_per_weight"], 2)),
        ("vRAM GiB", False, lambda r: _gib(r["weights_vram_gib"])),
        (f"GPUs @{df['gpu_mem_gb'].iloc[0]:g} GB", False, lambda r: _num(r["gpus_needed"], 0)),
        ("KV", True, kv.cell),
        ("KV GiB", False, lambda r: _gib(r["kv_cache_gib"])),
        ("GPUs +KV", False, lambda r: _num(r["gpus_needed_total"], 0)),
        (f"{metric} ± se", False, lambda r: tables.pm(r["accuracy"], r["accuracy_stderr"], 3)),
        ("recovery", False, lambda r: tables.pm(r["recovery_pct"], r["recovery_pct_stderr"], 1, unit="%")),
        *_suite_columns(df),
        ("vs floor", True, _verdict),
        ("Pareto", True, lambda r: "✓" if r["pareto"] else ""),
        (
            "≈ tied with",
            True,
            lambda r: "≈ " + ", ".join(number.get(t, t) for t in r["tied_with"]) if r["tied_with"] else "",
        ),
        ("quantize s", False, lambda r: _num(r["time_quantize_s"], 1)),
        ("eval s", False, lambda r: _num(r["time_eval_s"], 1)),
        ("vLLM", True, _vllm_cell),
        ("status", True, lambda r: _text(r["status"])),
        ("MLflow run", True, lambda r: _text(r["run_id"])),
    ]
    rows = [[cell(r) for _, _, cell in columns] for _, r in df.iterrows()]
    return [(title, text) for title, text, _ in columns], rows


def recovery_note(df: pd.DataFrame) -> str:
    """How the table's recovery ± was computed: the method each point run's tag names, with the rows of
    each method when they differ (a store can hold runs from before per-item scores were kept)."""
    rule = "recovery = accuracy / baseline accuracy"
    methods = df.loc[df["role"] == "point", ["run_id", "recovery_stderr_method"]].dropna()
    if methods.empty:
        return rule
    by_method = methods.groupby("recovery_stderr_method", sort=True)["run_id"]
    if by_method.ngroups == 1:
        (method,) = by_method.groups
        described = RECOVERY_METHODS.get(method, method)
        return f"{rule}, ± {method}: {described} (tag {tracking.RECOVERY_STDERR}={method})"
    number = _numbers(df)
    parts = [
        f"{method} on {', '.join(number[r] for r in runs)} ({RECOVERY_METHODS.get(method, method)})"
        for method, runs in by_method
    ]
    return f"{rule}, ± by each run's tag {tracking.RECOVERY_STDERR}: " + "; ".join(parts)


SUITE_RULE = (
    "per task: score (recovery ± stderr); recovery = quantized / baseline, or baseline / quantized for a "
    "lower-is-better metric (perplexity): 100% unchanged, below worse; mean rec. = the tasks' mean "
    "recovery, ± sqrt(Σ se²) / tasks; worst rec. = the lowest task's"
)


def _notes(df: pd.DataFrame) -> list[str]:
    gpus = f"{GPU_RULE} ({df['gpu_mem_gb'].iloc[0]:g} GB per GPU)"
    suite = [SUITE_RULE] if suite_tasks(df) else []
    return [TIE_RULE, PARETO_RULE, recovery_note(df), *suite, gpus, kv.context_note(df)]


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table plus the rules it was computed by."""
    columns, rows = _table(df)
    table = tables.markdown([title for title, _ in columns], rows, right=[not text for _, text in columns])
    return "\n".join([table, "", *(f"- {n}" for n in _notes(df))]) + "\n"


def _svg(path: Path) -> str:
    """An SVG file's <svg> element, to inline in HTML (its XML prolog and doctype are not allowed there)."""
    text = path.read_text()
    return text[text.index("<svg") :]


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
figure { margin: 0 0 1.5rem; } figure svg { max-width: 100%; height: auto; }
div.scroll { overflow-x: auto; } table { border-collapse: collapse; font-size: 0.8rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.4rem; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; } .text { text-align: left; } tr.baseline { background: #eef4ff; }
tr.pareto td:first-child { font-weight: bold; }
td.fail { color: #b00020; font-weight: bold; } td.run { font-family: monospace; }
ul { font-size: 0.85rem; color: #444; }
"""


def to_html(df: pd.DataFrame, plot_svg: Path | None) -> str:
    """A page that opens offline: the plot inlined as SVG, the table, the rules."""
    columns, rows = _table(df)
    head = "".join(
        f'<th class="{"text" if text else ""}">{html.escape(title)}</th>' for title, text in columns
    )
    body = []
    for (_, r), cells in zip(df.iterrows(), rows, strict=True):
        kinds = [r["role"], "pareto" if r["pareto"] else ""]
        tds = []
        for (title, text), cell in zip(columns, cells, strict=True):
            kind = "text" if text else ""
            kind += " fail" if cell.startswith("FAIL") else " run" if title == "MLflow run" else ""
            tds.append(f'<td class="{kind.strip()}">{html.escape(cell)}</td>')
        body.append(f'<tr class="{" ".join(kinds).strip()}">{"".join(tds)}</tr>')
    figure = f"<figure>{_svg(plot_svg)}</figure>" if plot_svg else ""
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in _notes(df))
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>quantsweep leaderboard</title>'
        f"<style>{_CSS}</style></head><body><h1>quantsweep leaderboard</h1>{figure}"
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
        f"<ul>{notes}</ul></body></html>\n"
    )


def export(
    df: pd.DataFrame,
    out_dir: str | Path,
    formats: Iterable[str] = FORMATS,
    gpu_mem_gb: float = 80,
    floor: float | None = None,
) -> dict[str, Path]:
    """Write leaderboard.<format> for each format, and always the plot (accuracy_vs_size.png/.svg).

    `gpu_mem_gb` recomputes the GPU column for that card; `floor` (when given) re-judges pass/fail
    against it instead of each run's logged floor. In the CSV, tied_with is space-separated run ids.
    Returns {format or "png"/"svg": path}.
    """
    from quantsweep.results import plots  # matplotlib: only when files are written

    formats = list(formats)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ValueError(
            f"formats {', '.join(unknown) or '(none)'} unknown: choose from {', '.join(FORMATS)}"
        )
    if df.empty:
        raise ValueError("the leaderboard is empty: nothing to export")
    df = adjusted(df, gpu_mem_gb, floor)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = plots.accuracy_vs_size(df, out / PLOT_STEM)
    writers = {
        "csv": lambda p: df.assign(tied_with=df["tied_with"].map(" ".join)).to_csv(p, index=False),
        "md": lambda p: p.write_text(to_markdown(df)),
        "html": lambda p: p.write_text(to_html(df, written["svg"])),
        "json": lambda p: df.to_json(p, orient="records", indent=2, force_ascii=False),
    }
    for fmt in formats:
        path = out / f"{STEM}.{fmt}"
        writers[fmt](path)
        written[fmt] = path
    return written


def log_to_run(run_id: str, out_dir: str | Path, tracking_uri: str | None = None) -> list[str]:
    """Attach the exported files in `out_dir` to a run under `leaderboard/`; returns the artifact paths."""
    from mlflow import MlflowClient

    files = sorted(p for p in Path(out_dir).glob("*") if p.is_file() and p.stem in (STEM, PLOT_STEM))
    if not files:
        raise ValueError(f"{out_dir} holds no exported leaderboard: run export() first")
    client = MlflowClient(tracking_uri)
    for path in files:
        client.log_artifact(run_id, str(path), "leaderboard")
    return [f"leaderboard/{p.name}" for p in files]
