"""The table printed at the end of a run or sweep: what a practitioner reads first."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quantsweep.sweep import PointReport

COLUMNS = ("point", "status", "GiB", "accuracy", "recovery", "pass")


def _pm(value: float | None, err: float | None, scale: float = 1.0, digits: int = 3) -> str:
    if value is None:
        return "-"
    text = f"{value * scale:.{digits}f}"
    return text if err is None else f"{text} ± {err * scale:.{digits}f}"


def point_row(name: str, status: str, reused: bool, m: dict[str, float]) -> dict[str, str]:
    passed = m.get("passed")
    return {
        "point": name,
        "status": status + (" (reused)" if reused else ""),
        "GiB": f"{m['disk_gib']:.3f}" if "disk_gib" in m else "-",
        "accuracy": _pm(m.get("accuracy"), m.get("accuracy_stderr")),
        "recovery": _pm(m.get("recovery"), m.get("recovery_stderr"), 100, 1)
        + ("%" if "recovery" in m else ""),
        "pass": "-" if passed is None else ("yes" if passed else "no"),
    }


def report_row(report: PointReport) -> dict[str, str]:
    return point_row(report.name, report.status, report.reused, report.metrics)


def baseline_row(name: str, metrics: dict[str, float]) -> dict[str, str]:
    return {
        "point": name,
        "status": "baseline",
        "GiB": f"{metrics['disk_gib']:.3f}" if "disk_gib" in metrics else "-",
        "accuracy": _pm(metrics.get("accuracy"), metrics.get("accuracy_stderr")),
        "recovery": "100%",
        "pass": "-",
    }


def format_table(rows: list[dict[str, str]]) -> str:
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS)]
    lines.append("  ".join("-" * widths[c] for c in COLUMNS))
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS) for r in rows]
    return "\n".join(lines)
