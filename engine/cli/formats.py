"""``lowbit formats``: the numeric formats and their bits per weight."""

from __future__ import annotations

import json

from .. import formats
from .common import print_table


def cmd_formats(args) -> int:
    rows = formats.table()
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
        return 0
    print_table(
        [[r.name, r.bits, r.block, r.scale_type, f"{r.effective_bits:.3f}", r.description] for r in rows],
        ["format", "bits", "block", "scale", "bits/weight", "description"],
    )
    print("\nbits/weight counts the scales, for rows of 4096 elements. Other widths and blocks:"
          " int2..int8 with _tensor/_g<N>/_asym, fp8_e4m3/_e5m2 with _channel/_g<N>.")
    return 0




def register(sub) -> None:
    f = sub.add_parser("formats", help="list the numeric formats")
    f.add_argument("--json", action="store_true", help="print JSON")
    f.set_defaults(func=cmd_formats)
