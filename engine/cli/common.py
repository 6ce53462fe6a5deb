"""What the verbs share: tables and the run summary printed at the end of a run."""

from __future__ import annotations

import sys
from typing import Any, Dict, List


def print_table(rows: List[List[str]], header: List[str], out=None) -> None:
    out = out or sys.stdout
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out.write(line.rstrip() + "\n" + "  ".join("-" * w for w in widths) + "\n")
    for r in rows:
        out.write("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v)


def print_summary(report: Dict[str, Any], out=None) -> None:
    out = out or sys.stdout
    rows = [("baseline", report.get("baseline", {})), ("ptq", report.get("ptq", {}))]
    if "final" in report:
        rows.append((report.get("mode", "final"), report["final"]))
    if "finetune_only" in report:
        rows.append(("finetune (no quant)", report["finetune_only"]))
    keys = [k for k in ("perplexity", "kl", "top1_agreement", "cosine", "embedding_cosine", "mse")
            if any(k in r for _, r in rows)]
    out.write(f"\n{report.get('scheme', '')} ({report.get('mode', '')})\n")
    out.write(f"{'':<20}" + "".join(f"{k:>18}" for k in keys) + "\n")
    for label, r in rows:
        out.write(f"{label:<20}" + "".join(f"{_fmt(r[k]) if k in r else '-':>18}" for k in keys) + "\n")
