"""``lowbit report``: one self-contained HTML page about runs and sweeps, to share."""

from __future__ import annotations

from ..pipeline.html_report import write_report


def cmd_report(args) -> int:
    path = write_report(args.runs, args.out, title=args.title)
    print(f"wrote {path} (open it in any browser; it has no external references)")
    return 0


def register(sub) -> None:
    r = sub.add_parser("report", help="write one HTML page (plots and tables) about runs or sweep folders")
    r.add_argument("runs", nargs="+", metavar="RUN", help="run folders, sweep folders or folders of runs")
    r.add_argument("--out", required=True, help="the HTML file to write (report.html)")
    r.add_argument("--title", default="Lowbit Studio report")
    r.set_defaults(func=cmd_report)
