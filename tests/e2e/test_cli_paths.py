"""Every path argument of the command line answers a wrong path with one clear line.

Cases: missing, a file where a folder is meant, a folder where a file is meant, and a place
that cannot be written. Each is checked through ``lowbit``'s real ``main`` (exit code 2, one
``error:`` line naming the flag, no traceback); the issue's own case also in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from engine.cli import main


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder in which nothing can be created, for this user (root ignores permission bits)."""
    if os.geteuid() != 0:
        d = tmp_path / "read-only"
        d.mkdir()
        d.chmod(0o555)
        return d
    probe = Path("/sys") / f"lowbit-{uuid.uuid4().hex[:6]}"
    try:
        probe.mkdir()
    except OSError:
        return Path("/sys")
    probe.rmdir()
    pytest.skip("no read-only folder is available to root here")


@pytest.fixture
def places(tmp_path, tiny_llama_dir, text_file):
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("not a folder\n")
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "recipe.yaml").write_text("version: 1\nmodel: {path: demo}\n")
    (finished / "report.json").write_text("{}")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\nmodel: {{path: {tiny_llama_dir}}}\ndata: {{path: {text_file}}}\n")
    return {"model": str(tiny_llama_dir), "data": str(text_file), "file": str(a_file), "empty": str(empty),
            "missing": str(tmp_path / "missing"), "finished": str(finished), "recipe": str(recipe),
            "unwritable": str(_unwritable_folder(tmp_path) / "out"), "inside_file": str(a_file / "out"),
            "out": str(tmp_path / "new-out")}


CASES = {
    # quantize: model / data / eval data / out
    "model missing": (["quantize", "--model", "{missing}", "--data", "{data}", "--out", "{out}"], "--model", "no such"),
    "model is a file": (["quantize", "--model", "{file}", "--data", "{data}", "--out", "{out}"], "--model", "is a file"),
    "data missing": (["quantize", "--model", "{model}", "--data", "{missing}", "--out", "{out}"], "--data", "no such"),
    "data folder without text": (["quantize", "--model", "{model}", "--data", "{empty}", "--out", "{out}"], "--data",
                                 "no .txt"),
    "eval data missing": (["quantize", "--model", "{model}", "--data", "{data}", "--eval-data", "{missing}",
                           "--out", "{out}"], "--eval-data", "no such"),
    "out is a file": (["quantize", "--model", "{model}", "--data", "{data}", "--out", "{file}"], "--out", "is a file"),
    "out inside a file": (["quantize", "--model", "{model}", "--data", "{data}", "--out", "{inside_file}"], "--out",
                          "is a file"),
    "out not writable": (["quantize", "--model", "{model}", "--data", "{data}", "--out", "{unwritable}"], "--out",
                         "cannot write"),
    "out holds a finished run": (["quantize", "--model", "{model}", "--data", "{data}", "--out", "{finished}"],
                                 "--out", "finished run"),
    # run: recipe / resume / out
    "recipe missing": (["run", "{missing}.yaml", "--out", "{out}"], "RECIPE", "no such"),
    "recipe is a folder": (["run", "{empty}", "--out", "{out}"], "RECIPE", "is a folder"),
    "run out is a file": (["run", "{recipe}", "--out", "{file}"], "--out", "is a file"),
    "run out not writable": (["run", "{recipe}", "--out", "{unwritable}"], "--out", "cannot write"),
    "resume missing": (["run", "--resume", "{missing}"], "--resume", "no such"),
    "resume is a file": (["run", "--resume", "{file}"], "--resume", "is a file"),
    "resume is not a run": (["run", "--resume", "{empty}"], "--resume", "not a run folder"),
    # export: run folder / out
    "export run missing": (["export", "{missing}", "--format", "dense", "--out", "{out}"], "RUN_DIR", "no such"),
    "export run is a file": (["export", "{file}", "--format", "dense", "--out", "{out}"], "RUN_DIR", "is a file"),
    "export out is a file": (["export", "{finished}", "--format", "dense", "--out", "{file}"], "--out", "is a file"),
    "export out not writable": (["export", "{finished}", "--format", "dense", "--out", "{unwritable}"], "--out",
                                "cannot write"),
    # analyze: model / data / out
    "analyze model is a file": (["analyze", "--model", "{file}", "--data", "{data}", "--out", "{out}"], "--model",
                                "is a file"),
    "analyze data missing": (["analyze", "--model", "{model}", "--data", "{missing}", "--out", "{out}"], "--data",
                             "no such"),
    "analyze out is a file": (["analyze", "--model", "{model}", "--data", "{data}", "--out", "{file}"], "--out",
                              "is a file"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_path_gets_one_clear_line(case, places, capsys):
    argv, flag, words = CASES[case]
    code = main([a.format(**places) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert flag in lines[0] and words in lines[0], err


def test_out_that_is_a_file_in_a_subprocess(places):
    """The case a user hit: ``lowbit quantize ... --out FILE`` ended in a FileExistsError traceback."""
    before = Path(places["file"]).read_text()
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "quantize", "--model", places["model"],
                           "--data", places["data"], "--out", places["file"]],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: --out {places['file']} is a file; give a folder to create "
                                                "(or an empty one)"]
    assert Path(places["file"]).read_text() == before
