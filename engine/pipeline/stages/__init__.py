"""One module per stage of a run; each stage is a function of the run context."""
