"""Leaderboards: every finished evaluation in an MLflow store as one ranked, noise-aware table.

`collect` reads runs with MLflow's own search (filters by sweep, model and tags), `export` writes CSV,
Markdown, JSON and a self-contained HTML page with the accuracy-vs-size plot, and `log_to_run` attaches
the files to a run (a sweep's parent), so a sweep's result can be read without re-querying the store.

Rows are compared only with rows scored against the same baseline run (same model and eval settings,
which is per model unless one model was evaluated two ways): accuracies from different evaluations are
not comparable.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from quantsweep import sizing, tracking

GIB = 2**30
FORMATS = ("csv", "md", "html", "json")
# What export writes, so log_to_run attaches these files and nothing else lying in the folder.
STEM = "leaderboard"
PLOT_STEM = "accuracy_vs_size"

COLUMNS = (
    "model",
    "role",
    "label",
    "scheme",
    "algorithm",
    "group_size",
    "ignore",
    "metric",
    "disk_gib",
    "compression",
    "bits_per_weight",
    "weights_vram_gib",
    "gpu_mem_gb",
    "gpus_needed",
    "accuracy",
    "accuracy_stderr",
    "baseline_accuracy",
    "recovery_pct",
    "recovery_pct_stderr",
    "floor",
    "floor_on",
    "passed",
    "pareto",
    "tied_with",
    "time_quantize_s",
    "time_eval_s",
    "status",
    "run_id",
    "baseline_run_id",
    "sweep_id",
)

GPU_RULE = (
    "GPUs = ceil(estimated weights vRAM (stored bytes x 1.2) / (GPU GB x 1e9)): sizing's total rule "
    "(gpus_needed_total) applied to the weights alone, KV cache not included"
)
TIE_RULE = (
    "≈ #k: accuracy differs from row #k's (same baseline) by less than sqrt(se1² + se2²), "
    "their combined standard error: statistically tied"
)
PARETO_RULE = (
    "Pareto ✓: no other row of the same model (same baseline) is both no larger on disk and no less "
    "accurate, and strictly better in one"
)
RECOVERY_RULE = "recovery = accuracy / baseline accuracy, ± both stderrs propagated to first order"


def _quoted(value: str) -> str:
    """A filter-string literal; MLflow's grammar has no escape for the quote itself."""
    if "'" in value:
        raise ValueError(
            f"filter value {value!r} contains a single quote, which MLflow's search cannot match"
        )
    return f"'{value}'"


def _search(experiment_id: str, clauses: Iterable[str]) -> pd.DataFrame:
    import mlflow

    return mlflow.search_runs([experiment_id], filter_string=" and ".join(clauses))


def _experiment_id(tracking_uri: str, experiment: str) -> str:
    """Point MLflow at an existing store and experiment; never creates either (a typo must not)."""
    import mlflow

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise ValueError(
            f"no MLflow store at {tracking_uri}: pass tracking_uri=sqlite:///<path to mlflow.db>"
        )
    mlflow.set_tracking_uri(tracking_uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(e.name for e in mlflow.search_experiments()) or "none"
        raise ValueError(f"experiment {experiment!r} not found in {tracking_uri} (experiments: {names})")
    return found.experiment_id


def _runs(
    experiment_id: str, sweep_id: str | None, model: str | None, tags: dict[str, str], include_failed: bool
) -> pd.DataFrame:
    """Matching points, then baselines: those matching the filters (no sweep) plus every one a point uses."""
    status = (
        ["attributes.status != 'RUNNING'", "attributes.status != 'SCHEDULED'"]
        if include_failed
        else ["attributes.status = 'FINISHED'"]
    )
    common = [*status, *(f"tags.`{k}` = {_quoted(v)}" for k, v in tags.items())]
    if model is not None:
        common.append(f"params.`model.name` = {_quoted(model)}")
    role = f"tags.`{tracking.ROLE}` = "
    sweep = [f"tags.`{tracking.SWEEP_ID}` = {_quoted(sweep_id)}"] if sweep_id is not None else []
    frames = [_search(experiment_id, [role + "'point'", *common, *sweep])]
    if sweep_id is None:
        frames.append(_search(experiment_id, [role + "'baseline'", *common]))
    frames = [f for f in frames if not f.empty]
    have = {run for f in frames for run in f["run_id"]}
    used = {run for f in frames for run in f.get(f"tags.{tracking.BASELINE_RUN}", pd.Series()).dropna()}
    if used - have:
        ids = ", ".join(_quoted(i) for i in sorted(used - have))
        frames.append(_search(experiment_id, [role + "'baseline'", f"attributes.run_id IN ({ids})"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _value(run: dict[str, Any], key: str) -> Any:
    """A search_runs cell, None when the run lacks it (pandas fills absent params/tags with NaN or None)."""
    value = run.get(key)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _row(run: dict[str, Any]) -> dict[str, Any]:
    """One run's leaderboard row; a baseline is its own reference (recovery 100 %, compression 1×)."""

    def metric(name: str) -> float:
        value = _value(run, f"metrics.{name}")
        return math.nan if value is None else float(value)

    def param(name: str) -> str | None:
        return _value(run, f"params.{name}")

    baseline = _value(run, f"tags.{tracking.ROLE}") == "baseline"
    group = param("scheme.group_size")
    row = {
        "model": param("model.name"),
        "role": "baseline" if baseline else "point",
        "metric": param("eval.primary_metric"),
        "disk_gib": metric("disk_gib"),
        "bits_per_weight": metric("bits_per_weight"),
        "weights_vram_gib": metric("weights_vram_est_gib"),
        "accuracy": metric("accuracy"),
        "accuracy_stderr": metric("accuracy_stderr"),
        "time_eval_s": metric("time_eval_s"),
        "status": run["status"],
        "run_id": run["run_id"],
        "sweep_id": _value(run, f"tags.{tracking.SWEEP_ID}"),
    }
    if baseline:
        return row | {
            "label": "baseline",
            "scheme": "baseline",
            "compression": 1.0,
            "baseline_accuracy": row["accuracy"],
            "recovery_pct": math.nan if math.isnan(row["accuracy"]) else 100.0,
            "recovery_pct_stderr": math.nan,
            "floor": math.nan,
            "passed": pd.NA,
            "time_quantize_s": math.nan,
            "baseline_run_id": run["run_id"],
        }
    group_size = "preset" if group in (None, "None") else group
    label = f"{param('scheme.name')} {param('scheme.algorithm')}" + (
        f" g{group}" if group_size == group else ""
    )
    passed = metric("passed")
    return row | {
        "label": label,
        "scheme": param("scheme.name"),
        "algorithm": param("scheme.algorithm"),
        "group_size": group_size,
        "ignore": param("ignore.resolved"),
        "compression": metric("compression_ratio"),
        "baseline_accuracy": metric("baseline_accuracy"),
        "recovery_pct": 100 * metric("recovery"),
        "recovery_pct_stderr": 100 * metric("recovery_stderr"),
        "floor": metric("floor"),
        "floor_on": param("eval.floor_on"),
        "passed": pd.NA if math.isnan(passed) else bool(passed),
        "time_quantize_s": metric("time_quantize_s"),
        "baseline_run_id": _value(run, f"tags.{tracking.BASELINE_RUN}"),
    }


def comparable(df: pd.DataFrame) -> pd.Series:
    """Rows whose numbers can be ranked: finished, with an accuracy and a size."""
    return (df["status"] == "FINISHED") & df["accuracy"].notna() & df["disk_gib"].notna()


def pareto_flags(df: pd.DataFrame) -> pd.Series:
    """True where no other comparable row with the same baseline is both no larger on disk and no less
    accurate, and strictly better in one of the two (rows equal in both do not dominate each other)."""
    flags = pd.Series(False, index=df.index)
    for _, group in df[comparable(df)].groupby("baseline_run_id"):
        size, acc = group["disk_gib"], group["accuracy"]
        for i in group.index:
            s, a = size.at[i], acc.at[i]
            flags.at[i] = not ((size <= s) & (acc >= a) & ((size < s) | (acc > a))).any()
    return flags


def ties(df: pd.DataFrame) -> pd.Series:
    """Run ids each row is statistically tied with: same baseline and |acc₁ − acc₂| < sqrt(se₁² + se₂²).

    The stderrs are lm-eval's (sample standard error of the mean over items); a missing one counts as
    zero. Both runs are scored on the same items, so the errors are positively correlated and this
    combined error is conservative: it calls more pairs tied, never fewer.
    """
    tied: dict[Any, list[str]] = {i: [] for i in df.index}
    for _, group in df[comparable(df)].groupby("baseline_run_id"):
        acc, se = group["accuracy"], group["accuracy_stderr"].fillna(0.0)
        for i in group.index:
            close = (acc - acc.at[i]).abs() < (se**2 + se.at[i] ** 2) ** 0.5
            tied[i] = [df.at[j, "run_id"] for j in group.index[close] if j != i]
    return pd.Series(tied, dtype=object)


def with_gpus(df: pd.DataFrame, gpu_mem_gb: float) -> pd.DataFrame:
    """GPUs of `gpu_mem_gb` decimal GB needed for each row's estimated weights vRAM (see GPU_RULE)."""
    if gpu_mem_gb <= 0:
        raise ValueError(f"gpu_mem_gb must be positive (e.g. 80 for an H100), got {gpu_mem_gb}")
    gpus = [
        pd.NA if math.isnan(gib) else sizing.gpus_needed_total(gib * GIB, gpu_mem_gb)
        for gib in df["weights_vram_gib"]
    ]
    return df.assign(gpu_mem_gb=float(gpu_mem_gb), gpus_needed=pd.array(gpus, dtype="Int64"))


def with_floor(df: pd.DataFrame, floor: float) -> pd.DataFrame:
    """Re-judge every point against another floor, on what each run's floor_on names."""
    if not 0 <= floor <= 1:
        raise ValueError(f"floor={floor} is outside [0, 1]: a fraction of the baseline (or an accuracy)")
    points = df["role"] == "point"
    measured = df["recovery_pct"].where(df["floor_on"] == "recovery", df["accuracy"] * 100) / 100
    passed = (measured >= floor).astype("boolean").where(points & measured.notna(), pd.NA)
    return df.assign(floor=df["floor"].where(~points, floor), passed=passed)


def adjusted(df: pd.DataFrame, gpu_mem_gb: float, floor: float | None = None) -> pd.DataFrame:
    """The table as exported: GPUs counted for this card, pass/fail against `floor` when one is given."""
    df = with_gpus(df, gpu_mem_gb)
    return df if floor is None else with_floor(df, floor)


def collect(
    tracking_uri: str,
    experiment: str,
    sweep_id: str | None = None,
    model: str | None = None,
    tags: dict[str, str] | None = None,
    include_failed: bool = False,
    gpu_mem_gb: float = 80.0,
) -> pd.DataFrame:
    """The leaderboard of an experiment's baseline and point runs, sorted by model then size on disk.

    Filters are MLflow search clauses: `sweep_id` (points tagged with it, plus the baselines they
    reference), `model` (param model.name), `tags` (exact tag values). Only FINISHED runs unless
    `include_failed` (then FAILED and KILLED too; they are never Pareto or tied). Raises ValueError when
    the store or experiment is missing or nothing matches.
    """
    runs = _runs(_experiment_id(tracking_uri, experiment), sweep_id, model, tags or {}, include_failed)
    if runs.empty:
        raise ValueError(
            f"no runs in experiment {experiment!r} of {tracking_uri} match {_describe(sweep_id, model, tags)}"
        )
    df = pd.DataFrame([_row(run) for run in runs.to_dict("records")]).reindex(columns=COLUMNS)
    df["passed"] = df["passed"].astype("boolean")
    df = df.sort_values(["model", "disk_gib", "accuracy"], ascending=[True, True, False], ignore_index=True)
    df["pareto"] = pareto_flags(df)
    df["tied_with"] = ties(df)
    return with_gpus(df, gpu_mem_gb)


def _describe(sweep_id: str | None, model: str | None, tags: dict[str, str] | None) -> str:
    """The filters as the CLI spells them, for the 'nothing matched' message."""
    parts = [f"sweep={sweep_id}"] if sweep_id else []
    parts += [f"model={model}"] if model else []
    parts += [f"tag.{k}={v}" for k, v in (tags or {}).items()]
    return " ".join(parts) or "(no filters)"


def _text(value: Any) -> str:
    return "-" if value is None or pd.isna(value) else str(value)


def _num(value: Any, digits: int) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def _gib(value: float) -> str:
    """Three significant digits, so a small model's sizes do not all print as 0.00."""
    return "-" if pd.isna(value) else f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _pm(value: float, err: float, digits: int, unit: str = "") -> str:
    if pd.isna(value):
        return "-"
    return f"{value:.{digits}f}{unit}" + ("" if pd.isna(err) else f" ± {err:.{digits}f}{unit}")


def _verdict(row: pd.Series) -> str:
    if pd.isna(row["passed"]):
        return "-"
    word = "pass" if row["passed"] else "FAIL"
    bound = f"{row['floor']:.0%}" if row["floor_on"] == "recovery" else f"{row['floor']:.3f} acc"
    return f"{word} (≥ {bound})"


def _table(df: pd.DataFrame) -> tuple[list[tuple[str, bool]], list[list[str]]]:
    """(title, is text) per column and the cells, shared by the Markdown and HTML tables. Rows are
    numbered #1… so a tie reads ≈ #k, unambiguous even when two rows share a scheme label."""
    number = {run: f"#{i + 1}" for i, run in enumerate(df["run_id"])}
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
        (f"{metric} ± se", False, lambda r: _pm(r["accuracy"], r["accuracy_stderr"], 3)),
        ("recovery", False, lambda r: _pm(r["recovery_pct"], r["recovery_pct_stderr"], 1, "%")),
        ("vs floor", True, _verdict),
        ("Pareto", True, lambda r: "✓" if r["pareto"] else ""),
        (
            "≈ tied with",
            True,
            lambda r: "≈ " + ", ".join(number.get(t, t) for t in r["tied_with"]) if r["tied_with"] else "",
        ),
        ("quantize s", False, lambda r: _num(r["time_quantize_s"], 1)),
        ("eval s", False, lambda r: _num(r["time_eval_s"], 1)),
        ("status", True, lambda r: _text(r["status"])),
        ("MLflow run", True, lambda r: _text(r["run_id"])),
    ]
    rows = [[cell(r) for _, _, cell in columns] for _, r in df.iterrows()]
    return [(title, text) for title, text, _ in columns], rows


def _notes(df: pd.DataFrame) -> list[str]:
    return [TIE_RULE, PARETO_RULE, RECOVERY_RULE, f"{GPU_RULE} ({df['gpu_mem_gb'].iloc[0]:g} GB per GPU)"]


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table plus the rules it was computed by."""
    columns, rows = _table(df)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "|".join("---" if text else "--:" for _, text in columns) + "|"
    table = [line([title for title, _ in columns]), rule, *(line(r) for r in rows)]
    return "\n".join([*table, "", *(f"- {n}" for n in _notes(df))]) + "\n"


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
    from quantsweep import plots

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


def sweep_run(tracking_uri: str, experiment: str, sweep_id: str) -> str:
    """The run id of a sweep's parent run (role=sweep), where its leaderboard belongs."""
    found = _search(
        _experiment_id(tracking_uri, experiment),
        [f"tags.`{tracking.ROLE}` = 'sweep'", f"tags.`{tracking.SWEEP_ID}` = {_quoted(sweep_id)}"],
    )
    if found.empty:
        raise ValueError(f"no sweep run (tag {tracking.ROLE}=sweep) with {tracking.SWEEP_ID}={sweep_id}")
    return str(found["run_id"].iloc[0])
