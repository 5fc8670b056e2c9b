"""The report of `optc auto`: report.json (the data), report.md (tables) and report.html (one self-contained
page: the tables, a latency-vs-accuracy plot with the Pareto front and the requirements drawn, per-class bars
and the profile chart; matplotlib with the Agg backend, images embedded as base64 PNG). Every file is written
atomically (optc.fileio)."""

from __future__ import annotations

import base64
import html
import io
import math
import os

from ..fileio import atomic_path, write_json

__all__ = ["pareto_front", "write_report"]

STATUS_COLOURS = {"baseline": "#1f77b4", "kept": "#2ca02c", "rejected": "#7f7f7f", "failed": "#d62728"}
CHOSEN_COLOUR = "#ff7f0e"


def _measured(report: dict) -> list[dict]:
    return [r for r in [*report["baseline"], *report["steps"]] if r.get("latency_ms")]


def _value(report: dict, rec: dict) -> float | None:
    """The metric on the plot's axis: percent for top-k."""
    v = rec.get("value")
    if v is None:
        return None
    return 100.0 * v if report["metric"].startswith("top") else v


def _latency(base_ms: float, rec: dict) -> float:
    """A candidate's latency on the plot: the baseline's median over its speed-up (the median of per-round
    ratios, timed in alternation with the baseline), which separate medians taken minutes apart on a busy
    machine would blur."""
    return base_ms / rec["speedup"]


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool = True) -> list[int]:
    """Indices of the points (latency, quality) no other point beats on both (lower latency, better quality),
    sorted by latency."""
    sign = 1.0 if higher_is_better else -1.0
    front = []
    for i, (lat, q) in enumerate(points):
        dominated = any((l2 <= lat and sign * q2 >= sign * q) and (l2 < lat or sign * q2 > sign * q)
                        for j, (l2, q2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(report: dict) -> dict[str, str]:
    """name -> base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    metric, req = report["metric"], report["requirements"]
    topk = metric.startswith("top")
    recs = [r for r in _measured(report) if _value(report, r) is not None]
    base = report["baseline"][0]
    chosen = report["chosen"]
    fig, ax = plt.subplots(figsize=(8, 5))
    base_ms = base["latency_ms"]["median_ms"]
    points = [(_latency(base_ms, r), _value(report, r)) for r in recs]
    for r, (x, y) in zip(recs, points, strict=True):
        marker = "s" if r.get("backend") == "tvm-cpu" else "o"
        ax.scatter([x], [y], s=60, marker=marker, color=STATUS_COLOURS.get(r.get("status"), "#7f7f7f"), zorder=3)
        ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front = pareto_front(points, higher_is_better=metric != "mse")
    if len(front) > 1:
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "-", color="#9467bd", lw=1.5,
                label="Pareto front", zorder=2)
    if chosen.get("latency_ms") and _value(report, chosen) is not None:
        ax.scatter([_latency(base_ms, chosen)], [_value(report, chosen)], s=260, marker="*",
                   color=CHOSEN_COLOUR, edgecolor="black", zorder=4, label="chosen")
    drop = req["max_accuracy_drop"]
    if _value(report, base) is not None:
        floor = _value(report, base) - drop if topk else (base["value"] + drop if metric == "mse"
                                                           else base["value"] - drop)
        ax.axhline(floor, color="#d62728", ls="--", lw=1, label=f"accuracy budget ({drop:g} {report['unit']})")
    if req.get("max_latency_ms") is not None:
        ax.axvline(req["max_latency_ms"], color="#8c564b", ls="--", lw=1,
                   label=f"max latency {req['max_latency_ms']:g} ms")
    if req.get("min_speedup") is not None:
        ax.axvline(base_ms / req["min_speedup"], color="#e377c2", ls=":", lw=1.5,
                   label=f"{req['min_speedup']:g}x speed-up")
    for status, colour in STATUS_COLOURS.items():
        ax.scatter([], [], color=colour, label=status)
    ax.set_xlabel("latency (ms): the baseline's median / the candidate's paired speed-up; squares: tvm-cpu, "
                  "circles: onnxruntime", fontsize=8)
    ax.set_ylabel(f"{metric} (%)" if topk else metric)
    ax.set_title("latency vs accuracy of every candidate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    out["tradeoff"] = _png(fig)
    if topk and base.get("per_class") and chosen.get("per_class"):
        classes = list(base["per_class"])
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(classes) + 2), 4))
        xs = range(len(classes))
        ax.bar([x - 0.2 for x in xs], [100 * base["per_class"][c] for c in classes], 0.4, label="baseline",
               color=STATUS_COLOURS["baseline"])
        ax.bar([x + 0.2 for x in xs], [100 * chosen["per_class"].get(c, math.nan) for c in classes], 0.4,
               label=f"chosen ({chosen['name']})", color=CHOSEN_COLOUR)
        ax.set_xticks(list(xs), classes)
        low = min(100 * min(base["per_class"].values()), 100 * min(chosen["per_class"].values()))
        ax.set_ylim(max(0.0, low - 5), 100.5)
        ax.set_xlabel("class")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title("per-class accuracy")
        ax.legend(fontsize=8)
        out["per_class"] = _png(fig)
    profiles = {k: v for k, v in report.get("profile", {}).items() if isinstance(v, dict) and v["by_op_type"]}
    if profiles:
        fig, axes = plt.subplots(1, len(profiles), figsize=(6 * len(profiles), 4), squeeze=False)
        for ax, (which, prof) in zip(axes[0], profiles.items(), strict=True):
            rows = prof["by_op_type"][::-1]
            ax.barh([r["op_type"] for r in rows], [100 * r["share"] for r in rows], color="#17becf")
            ax.set_xlabel("share of op time (%)")
            ax.set_title(f"{which} ({prof['backend']}): {prof['total_us'] / max(1, prof['runs']) / 1e3:.3f} ms "
                         "of ops per run", fontsize=9)
        fig.tight_layout()
        out["profile"] = _png(fig)
    return out


# -- tables ---------------------------------------------------------------------------------------------------


def _fmt(x, spec: str = ".3f") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return format(x, spec)


def _metric(report: dict, v) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.2f}%" if report["metric"].startswith("top") else f"{v:.6g}"


def _rows(report: dict) -> tuple[list[str], list[list[str]]]:
    head = ["step", "backend", "status", report["metric"], f"drop ({report['unit']})", "worst class drop",
            "max abs diff", "median ms", "p90 ms", "speed-up", "size MB", "s", "reason"]
    rows = []
    for r in [*report["baseline"], *report["steps"]]:
        worst = r.get("worst_class")
        lat = r.get("latency_ms") or {}
        rows.append([r["name"], r.get("backend", ""), r.get("status", ""), _metric(report, r.get("value"))
                     if "value" in r else "", _fmt(r.get("drop"), ".3g") if "drop" in r else "",
                     f"{worst['drop_points']:.2f} (class {worst['class']})" if worst else "",
                     _fmt(r.get("max_abs_diff"), ".3g") if "max_abs_diff" in r else "",
                     _fmt(lat.get("median_ms")) if lat else "", _fmt(lat.get("p90_ms")) if lat else "",
                     f"{r['speedup']:.2f}x" if r.get("speedup") is not None else "",
                     _fmt(r.get("size_mb")) if "size_mb" in r else "", _fmt(r.get("seconds"), ".1f")
                     if "seconds" in r else "", r.get("reason", "")])
    return head, rows


def _class_rows(report: dict) -> list[list[str]]:
    base, chosen = report["baseline"][0], report["chosen"]
    if not base.get("per_class") or not chosen.get("per_class"):
        return []
    return [[c, f"{100 * a:.2f}%", f"{100 * chosen['per_class'].get(c, math.nan):.2f}%",
             f"{100 * (a - chosen['per_class'].get(c, math.nan)):.2f}"] for c, a in base["per_class"].items()]


def _summary(report: dict) -> list[str]:
    c = report["chosen"]
    lines = [f"chosen: **{c['name']}** on {c.get('backend')} ({report['files'].get('model.so') if c.get('backend') == 'tvm-cpu' else report['files'].get('model.onnx')})",
             f"requirements: {'all met' if report['met'] else 'NOT all met'}; search stopped: {report['stop_reason']}",
             f"run time: {report['seconds']:.0f} s of a {report['budget_s']:.0f} s budget"]
    lines += [f"- {v['text']}" for v in report["verdicts"].values()]
    return lines


def _markdown(report: dict) -> str:
    head, rows = _rows(report)
    md = [f"# optc auto: {os.path.basename(report['model'])}", "", *_summary(report), "",
          "## Steps (in order; the baseline first)", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    classes = _class_rows(report)
    if classes:
        md += ["", "## Per-class accuracy (baseline vs chosen)", "", "| class | baseline | chosen | drop (points) |",
               "|---|---|---|---|"]
        md += ["| " + " | ".join(r) + " |" for r in classes]
    for which, prof in report.get("profile", {}).items():
        md += ["", f"## Profile: {which}", ""]
        if isinstance(prof, str):
            md.append(prof)
            continue
        md += [f"{prof['backend']}, {prof['runs']} runs", "", "| op type | share | total us | calls |",
               "|---|---|---|---|"]
        md += [f"| {r['op_type']} | {100 * r['share']:.1f}% | {r['total_us']:.0f} | {r['calls']} |"
               for r in prof["by_op_type"]]
    md += ["", "Plots: report.html."]
    return "\n".join(md) + "\n"


def _html_table(head: list[str], rows: list[list[str]], statuses: list[str] | None = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for i, row in enumerate(rows):
        cls = f' class="{statuses[i]}"' if statuses else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    return "\n".join(out) + "</table>"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0;
font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f0f0f0}
td:first-child,td:last-child{text-align:left}tr.kept{background:#e8f6e8}tr.baseline{background:#e8f0fa}
tr.failed{background:#fbe9e9}.met{color:#2ca02c}.unmet{color:#d62728;font-weight:bold}img{max-width:100%}"""


def _html(report: dict, plots: dict[str, str]) -> str:
    head, rows = _rows(report)
    statuses = [r.get("status", "") for r in [*report["baseline"], *report["steps"]]]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>optc auto: "
             f"{html.escape(os.path.basename(report['model']))}</title><style>{_CSS}</style></head><body>",
             f"<h1>optc auto: {html.escape(os.path.basename(report['model']))}</h1>"]
    c = report["chosen"]
    parts.append(f"<p>Chosen: <b>{html.escape(c['name'])}</b> on {html.escape(str(c.get('backend')))}. "
                 f"Search stopped: {html.escape(report['stop_reason'])}. Run time {report['seconds']:.0f} s of a "
                 f"{report['budget_s']:.0f} s budget.</p><ul>")
    for v in report["verdicts"].values():
        parts.append(f"<li class='{'met' if v['met'] else 'unmet'}'>{html.escape(v['text'])}</li>")
    parts.append("</ul>")
    if "tradeoff" in plots:
        parts.append(f"<h2>Latency vs accuracy</h2><img alt='latency vs accuracy' "
                     f"src='data:image/png;base64,{plots['tradeoff']}'>")
    parts += ["<h2>Steps</h2>", _html_table(head, rows, statuses)]
    classes = _class_rows(report)
    if classes:
        parts.append("<h2>Per-class accuracy</h2>")
        if "per_class" in plots:
            parts.append(f"<img alt='per-class accuracy' src='data:image/png;base64,{plots['per_class']}'>")
        parts.append(_html_table(["class", "baseline", "chosen", "drop (points)"], classes))
    parts.append("<h2>Profile</h2>")
    if "profile" in plots:
        parts.append(f"<img alt='profile' src='data:image/png;base64,{plots['profile']}'>")
    for which, prof in report.get("profile", {}).items():
        if isinstance(prof, str):
            parts.append(f"<p>{html.escape(which)}: {html.escape(prof)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(outdir: str, report: dict) -> None:
    """Write report.json, report.md and report.html of `report` (the dict `optc.workflow.auto` builds) into
    `outdir`, each atomically."""
    write_json(os.path.join(outdir, "report.json"), _json_safe(report))
    for name, text in (("report.md", _markdown(report)), ("report.html", _html(report, _plots(report)))):
        with atomic_path(os.path.join(outdir, name)) as tmp, open(tmp, "w") as f:
            f.write(text)


def _json_safe(x):
    """Non-finite floats -> None (JSON has no infinity or NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x
