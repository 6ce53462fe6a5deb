"""``lowbit keys``: every recipe key, its default, what it accepts and what it does.

The table comes from the recipe schema itself (the same declarations that validate a
recipe), so it cannot fall behind the code; ``docs/recipe-keys.md`` is this command's
``--markdown`` output, and a test keeps it equal.
"""

from __future__ import annotations

import json
from typing import List

from ..recipe import schema
from .common import print_table

DOC_PATH = "docs/recipe-keys.md"
_HEADER = ("# Recipe keys\n\n"
           "Every key a recipe file accepts, generated from the recipe schema by `lowbit keys --markdown`\n"
           "(a test keeps this file equal to that output). A key that is not given takes its default;\n"
           "unknown keys, wrong types and out-of-range values are errors that name the key. `[]` marks the\n"
           "fields of each entry of a list. A recipe is a YAML or JSON file; `lowbit quantize` writes one\n"
           "from its flags, and the window writes one for every run.\n")


def _value(v) -> str:
    if v is None:
        return "null"
    return json.dumps(v) if not isinstance(v, str) else v


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    """The key reference as a Markdown document, one table per top-level section."""
    lines: List[str] = [_HEADER]
    section = None
    for info in schema():
        top = info.key.split(".")[0] if "." in info.key else ""
        if top != section:
            section = top
            lines += ["", f"## {section or 'top level'}", "", "| key | default | accepts | what it does |",
                      "|---|---|---|---|"]
        default = "(required)" if info.required else f"`{_cell(_value(info.default))}`"
        lines.append(f"| `{info.key}` | {default} | {_cell(info.expected)} | {_cell(info.doc)} |")
    return "\n".join(lines) + "\n"


def cmd_keys(args) -> int:
    infos = schema()
    if args.filter:
        infos = [i for i in infos if args.filter in i.key]
    if args.json:
        print(json.dumps([{"key": i.key, "default": i.default, "required": i.required, "accepts": i.expected,
                           "doc": i.doc} for i in infos], indent=2))
    elif args.markdown:
        print(markdown(), end="")
    else:
        print_table([[i.key, "(required)" if i.required else _value(i.default), i.doc] for i in infos],
                    ["key", "default", "what it does"])
    return 0


def register(sub) -> None:
    k = sub.add_parser("keys", help="every recipe key: default, accepted values, what it does")
    k.add_argument("filter", nargs="?", default="", help="only keys containing this text (e.g. train.kd)")
    form = k.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print JSON")
    form.add_argument("--markdown", action="store_true", help=f"print the Markdown reference ({DOC_PATH})")
    k.set_defaults(func=cmd_keys)
