"""The ``lowbit`` command line: every job the studio window does, from a terminal.

One module per verb; each has ``register(subparsers)`` and its ``cmd_*`` functions.
A new verb is a new module here and one line in :data:`VERBS`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from ..errors import LowbitError
from . import analyze, bench, export, formats, keys, plan, quantize, report, run, sweep

VERBS = (formats, keys, bench, plan, run, quantize, analyze, export, sweep, report)  # the order `lowbit --help` lists them in


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowbit", description="Lowbit Studio: quantize models with PTQ, QAT or QAD.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for verb in VERBS:
        verb.register(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LowbitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`lowbit formats | head`): not a failure, and nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
