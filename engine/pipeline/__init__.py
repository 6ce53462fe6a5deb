"""The pipeline: one run of a recipe, stage by stage, in its run folder.

- :mod:`.runner`: :func:`run` and the ordered list of stages;
- :mod:`.context`: what the stages share (recipe, run folder, events, cancel token, device, ranks);
- :mod:`.stages`: one module per stage (load, quantize, calibrate, evaluate, analyze, train, export,
  benchmark);
- :mod:`.student`: saving the quantized student and rebuilding it later (export, analysis, the window);
- :mod:`.torchrun`: the command that runs a recipe on several processes;
- :mod:`.recovery`, :mod:`.trainbench`: benchmarks built from whole runs and training steps.
"""

from .context import RunContext, RunResult
from .runner import run, stages_for
from .student import STUDENT_FILE, build_student, load_student

__all__ = ["run", "stages_for", "RunContext", "RunResult", "STUDENT_FILE", "build_student", "load_student"]
