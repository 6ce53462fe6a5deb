"""`lowbit keys` and docs/recipe-keys.md: every recipe key documented, generated from the schema."""

import json
import subprocess
import sys
from pathlib import Path

from engine.cli.keys import DOC_PATH, markdown
from engine.recipe import schema

ROOT = Path(__file__).resolve().parents[2]


def test_the_key_reference_in_docs_is_up_to_date():
    doc = (ROOT / DOC_PATH).read_text(encoding="utf-8")
    assert doc == markdown(), f"{DOC_PATH} is stale: regenerate it with `lowbit keys --markdown > {DOC_PATH}`"


def test_every_key_and_its_doc_is_in_the_reference():
    doc = markdown()
    for info in schema():
        assert f"| `{info.key}` |" in doc
        assert info.doc.replace("|", "\\|") in doc


def test_readme_points_to_the_reference():
    assert DOC_PATH in (ROOT / "README.md").read_text(encoding="utf-8")


def test_lowbit_keys_json_and_filter_in_a_subprocess():
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "keys", "calibration.gptq", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert rows and all("calibration.gptq" in r["key"] for r in rows)
    assert {"calibration.gptq_damp", "calibration.gptq_block_size"} <= {r["key"] for r in rows}
    assert all(r["doc"] for r in rows)
