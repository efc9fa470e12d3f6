"""The page of `pld report`: ``ReportResult`` rendered as one self-contained HTML document
(inline CSS, confusion matrices as inline SVG, no scripts, nothing fetched). Every text that came
from input data or the bundle is escaped. Knows the report's structs (``report_types.py``),
nothing of how their numbers were measured.
"""

from __future__ import annotations

import html

import numpy as np

from pld.metrics import Report

from .report_types import ERROR_CHARS, Comparison, ReportResult

__all__ = ["confusion_svg", "render_html"]

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1a1a1a;
margin:0 auto;max-width:1180px;padding:20px 28px;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ddd;
padding-bottom:3px}.meta{color:#555;font-size:12.5px}.meta code{font-size:12px}
table{border-collapse:collapse;margin:6px 0}th,td{border:1px solid #d6d6d6;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f3f5f8;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.main td{background:#eef5ff;font-weight:600}.ci{color:#666;font-weight:400}
.good{color:#116b2a}.bad{color:#a8201a}.note{color:#555;font-size:12.5px;margin:4px 0}
.cms{display:flex;flex-wrap:wrap;gap:18px}.cm figcaption{font-weight:600;margin-bottom:2px}
ol.rules li{margin:3px 0}.prov{color:#666;font-size:12px}
td.input{white-space:pre-wrap;font:12px/1.35 ui-monospace,Menlo,Consolas,monospace;max-width:620px;
word-break:break-word}td.id{font-size:11px;max-width:150px;word-break:break-all;color:#555}
"""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _ci(v: float, ci: tuple[float, float], signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    lo, hi = (f.format(x) for x in ci)
    return f'{f.format(v)} <span class="ci">[{lo}, {hi}]</span>'


def _heat(frac: float) -> str:
    """White to dark blue."""
    lo, hi = np.array([247, 251, 255]), np.array([8, 69, 148])
    r, g, b = (lo + (hi - lo) * frac).round().astype(int)
    return f"rgb({r},{g},{b})"


def confusion_svg(rep: Report, title: str) -> str:
    """The confusion matrix as an inline SVG heatmap (rows gold, columns predicted; colour is
    the share of the row, the number the count)."""
    labels, m = rep.labels, np.array(rep.confusion, dtype=float)
    cell = 52 if len(labels) <= 4 else 40
    left = 16 + 7 * max(len(x) for x in labels)
    top = 20 + int(4.5 * max(len(x) for x in labels))
    longest = max(len(x) for x in labels)
    right = int(6 * longest)  # the last column's label, slanted, reaches past the grid
    w = max(left + cell * len(labels) + right, left + 200)
    h = top + cell * len(labels) + 26
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
        f'aria-label="confusion matrix, {_e(title)}" font-family="system-ui,sans-serif" '
        'font-size="12">'
    ]
    for j, name in enumerate(labels):
        x = left + cell * j + cell / 2
        parts.append(
            f'<text x="{x}" y="{top - 6}" transform="rotate(-35 {x} {top - 6})">{_e(name)}</text>'
        )
    for i, name in enumerate(labels):
        y = top + cell * i
        parts.append(
            f'<text x="{left - 6}" y="{y + cell / 2 + 4}" text-anchor="end">{_e(name)}</text>'
        )
        for j in range(len(labels)):
            x = left + cell * j
            frac = float(share[i, j])
            ink = "#fff" if frac > 0.55 else "#111"
            stroke = ' stroke="#333" stroke-width="1.5"' if i == j else ' stroke="#ccc"'
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{_heat(frac)}"'
                f"{stroke}><title>gold {_e(name)}, predicted {_e(labels[j])}: "
                f"{int(m[i, j])} ({frac:.0%} of the row)</title></rect>"
                f'<text x="{x + cell / 2}" y="{y + cell / 2 + 4}" text-anchor="middle" '
                f'fill="{ink}">{int(m[i, j])}</text>'
            )
    yb = top + cell * len(labels) + 18
    parts.append(
        f'<text x="{left}" y="{yb}" fill="#555">rows: gold, columns: predicted</text></svg>'
    )
    return "".join(parts)


def _table(
    head: list[str], rows: list[list[str]], cls: list[str] | None = None, main: bool = False
) -> str:
    """An HTML table of already escaped cells; ``cls`` is each column's class (default: the
    first column text, the others numbers); ``main`` highlights the first row."""
    cls = cls or [""] + ["num"] * (len(head) - 1)
    th = "".join(f'<th class="{c}">{h}</th>' for c, h in zip(cls, head, strict=True))
    body = []
    for k, row in enumerate(rows):
        tds = "".join(f'<td class="{c}">{x}</td>' for c, x in zip(cls, row, strict=True))
        mark = ' class="main"' if main and k == 0 else ""
        body.append(f"<tr{mark}>{tds}</tr>")
    return f"<table><tr>{th}</tr>{''.join(body)}</table>"


def _delta(c: Comparison) -> str:
    lo, hi = c.delta_macro_f1_ci
    cls = "good" if lo > 0 else "bad" if hi < 0 else ""
    return f'<span class="{cls}">{_ci(c.delta_macro_f1, c.delta_macro_f1_ci, signed=True)}</span>'


def render_html(res: ReportResult) -> str:
    """The report as one HTML page: inline CSS and SVG, no scripts, nothing fetched."""
    main = res.systems[0]
    deltas = {c.baseline: c for c in res.comparisons}
    summary = _table(
        ["system", "Macro-F1 [95% CI]", "accuracy [95% CI]", "n", "Δ Macro-F1, bundle − it"],
        [
            [
                _e(s.name),
                _ci(s.macro_f1, s.macro_f1_ci),
                _ci(s.accuracy, s.accuracy_ci),
                str(s.n),
                _delta(deltas[s.name]) if s.name in deltas else "",
            ]
            for s in res.systems
        ],
        main=True,
    )
    head = ["label", "support"] + [
        f"{_e(s.name)} {k}" for s in res.systems for k in ("P", "R", "F1")
    ]
    per_label = _table(
        head,
        [
            [_e(name), str(main.report.per_label[name].support)]
            + [
                f"{getattr(s.report.per_label[name], k):.3f}"
                for s in res.systems
                for k in ("precision", "recall", "f1")
            ]
            for name in main.report.labels
        ],
    )
    matrices = "".join(
        f'<figure class="cm"><figcaption>{_e(s.name)}</figcaption>'
        f"{confusion_svg(s.report, s.name)}</figure>"
        for s in res.systems
    )
    latency = _table(
        ["system", "p50 ms", "p95 ms", "mean ms", "input tokens (mean)", "prompt tokens", "prime"],
        [
            [
                _e(s.name),
                f"{s.latency.p50_ms:.1f}",
                f"{s.latency.p95_ms:.1f}",
                f"{s.latency.mean_ms:.1f}",
                f"{s.latency.mean_input_tokens:.1f}",
                str(s.latency.prompt_tokens),
                f"{s.latency.prime_ms:.0f} ms"
                if s.latency.prime_ms is not None
                else f"restored in {s.latency.restore_ms or 0:.0f} ms",
            ]
            for s in res.systems
        ],
    )
    if res.rules:
        items = []
        for r in res.rules:
            eff = ""
            if r.effect:
                e = r.effect
                eff = (
                    f"; without it Macro-F1 {e['delta_macro_f1']:+.3f} "
                    f"[{e['ci_low']:+.3f}, {e['ci_high']:+.3f}] (n={e['n']})"
                )
            items.append(
                f'<li>{_e(r.text)} <span class="prov">[{_e(r.id)}; support {r.support}; '
                f"cluster {_e(r.cluster)}; round {r.round}{eff}]</span></li>"
            )
        rules = f'<ol class="rules">{"".join(items)}</ol>'
    else:
        rules = (
            '<p class="note">No rules: the student sees only the task and the labels, so the '
            "bundle's prompt is the zero-shot prompt.</p>"
        )
    labels = "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in res.labels.items())
    prov = (
        _table(
            ["provenance", "value"],
            [[_e(k), _e(v)] for k, v in sorted(res.provenance.items())],
            ["", ""],
        )
        if res.provenance
        else ""
    )
    errors = _table(
        ["#", "id", "input (clipped)", "gold", "bundle said", "p(said)", "p(gold)"],
        [
            [
                str(e.index + 1),
                _e(e.id),
                _e(e.text),
                _e(e.gold),
                _e(e.predicted),
                f"{e.probability:.3f}",
                f"{e.gold_probability:.3f}",
            ]
            for e in res.errors
        ],
        ["num", "id", "input", "", "", "num", "num"],
    )
    errors_note = (
        f"{len(res.errors)} of {res.n} inputs wrong, most confident first; each input cut to "
        f"{ERROR_CHARS} characters (its start and its end)."
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>pld report: {_e(res.bundle)} {_e(res.version)} on {_e(res.split)}</title>
<style>{_CSS}</style></head><body>
<h1>{_e(res.bundle)} {_e(res.version)} <span class="ci">on {_e(res.split)} (n={res.n})</span></h1>
<div class="meta">bundle digest <code>{_e(res.digest or "-")}</code> · file <code>{_e(res.bundle_file)}</code><br>
model <b>{_e(res.model)}</b> sha256 <code>{_e(res.model_sha256)}</code> · calibrated {main.calibrated}
· batch size {res.batch_size}<br>
data <code>{_e(res.data)}</code>{f" (first {res.limit})" if res.limit else ""} · task {_e(res.task)}
· generated {_e(res.generated_at)} in {res.wall_s:.0f} s</div>
<h2>Summary</h2>{summary}
<p class="note">95% percentile bootstrap intervals ({res.n_boot} resamples). The last column is
the bundle minus that baseline, with a paired bootstrap interval (green: above 0, red: below).</p>
<h2>Per label</h2>{per_label}
<h2>Confusion matrices</h2><div class="cms">{matrices}</div>
<h2>Latency per request</h2>{latency}
<p class="note">From the classifier's own timings (tokenize + decode + scoring); the system prompt
is decoded once per system (prime) or restored from the prefix-state cache.</p>
<h2>Rules ({len(res.rules)})</h2>{rules}
<h3>Labels</h3><ul>{labels}</ul>{prov}
<h2 id="errors">Wrong answers of the bundle</h2><p class="note">{errors_note}</p>{errors}
</body></html>
"""
