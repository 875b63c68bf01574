"""The parity table for the terminal; the JSON report holds the same numbers."""
from __future__ import annotations

from lmexport.parity.run import ParityReport

COLUMNS = (("max_abs", "max|d|", "{:.3g}"), ("mean_abs", "mean|d|", "{:.3g}"), ("rel", "rel", "{:.3g}"),
           ("cosine_min", "cos min", "{:.6f}"), ("top1", "top-1", "{:.3f}"), ("kl_mean", "KL mean", "{:.3g}"),
           ("kl_max", "KL max", "{:.3g}"))


def format_table(report: ParityReport) -> str:
    head = f"{'step':<10}" + "".join(f"{title:>11}" for _, title, _ in COLUMNS)
    lines = [f"parity: {report.kind} {report.artifact} vs PyTorch {report.model} (preset {report.preset})",
             f"logits of the artifact: {report.engine}",
             head, "-" * len(head)]
    rows = list(report.steps) + ([{"step": "overall", **report.overall.to_json()}] if report.overall else [])
    for row in rows:
        lines.append(f"{row['step']:<10}" + "".join(f"{fmt.format(row[key]):>11}" for key, _, fmt in COLUMNS))
    if report.greedy_match:
        steps = len(report.steps) - 1
        lines.append(f"identical greedy continuation: min {min(report.greedy_match)}/{steps} tokens "
                     f"(per prompt: {', '.join(map(str, report.greedy_match))})")
    if report.passed:
        lines.append("PASS")
    else:
        lines.append("FAIL: " + "; ".join(report.failures))
        if report.divergence:
            d = report.divergence
            lines.append(f"first divergence: {d.where} (relative difference {d.relative_difference:.3g} "
                         f"> {d.threshold:g}; per-layer outputs from the {report.localised_by})")
        elif report.per_layer:
            lines.append("no layer module diverges beyond the threshold: the difference is in the final norm "
                         f"or lm_head (per-layer outputs from the {report.localised_by})")
    return "\n".join(lines)
