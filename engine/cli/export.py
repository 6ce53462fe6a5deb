"""``lowbit export RUN_DIR --format compressed-tensors|modelopt|dense --out DIR``."""

from __future__ import annotations

import json

from pathlib import Path

from ..errors import LowbitError
from ..export import summary_line
from ..pipeline.stages.export import export_run
from . import paths

FORMATS = ("compressed-tensors", "modelopt", "dense")


def cmd_export(args) -> int:
    run_dir = paths.run_folder(args.run_dir, "RUN_DIR")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise LowbitError(f"--out {args.out} is a file; give a new or empty folder for the export")
    paths.writable_folder(str(out.parent) if not out.exists() else str(out), "--out")
    result = export_run(run_dir, args.format, args.out, verify=not args.no_verify,
                        max_shard_mb=args.max_shard_mb, device=args.device)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(summary_line(result))
    return 0


def register(sub) -> None:
    e = sub.add_parser("export", help="export a finished run as a checkpoint serving engines load, then verify it",
                       description="Write the quantized model of a finished run folder in a serving layout, reload "
                                   "it, check its logits against the run's quantized model, and record the result "
                                   "under \"export\" in the run's report.json.")
    e.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder (report.json + student.safetensors)")
    e.add_argument("--format", required=True, choices=FORMATS,
                   help="compressed-tensors (vLLM), modelopt (TensorRT-LLM) or dense (fake-quantized weights)")
    e.add_argument("--out", required=True, metavar="DIR",
                   help="output folder: new, empty, or a previous lowbit export (anything else is refused)")
    e.add_argument("--max-shard-mb", type=float, help="largest safetensors shard in MB (default: the recipe's)")
    e.add_argument("--no-verify", action="store_true", help="skip reloading and comparing the export")
    e.add_argument("--device", default="cpu", help="device for rebuilding and verifying (default cpu)")
    e.add_argument("--json", action="store_true", help="print the export summary as JSON")
    e.set_defaults(func=cmd_export)
