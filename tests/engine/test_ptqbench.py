"""bench ptq's table: a KL column next to perplexity, and per scheme whether GPTQ closes half of
RTN's gap in each (synthetic rows: the whole benchmark runs for minutes)."""

from __future__ import annotations

from engine.pipeline.ptqbench import format_table, gap_verdicts


def _rows():
    def row(scheme, algo, ppl, kl, qad=None, qad_kl=None):
        r = {"scheme": scheme, "algorithm": algo, "ptq": ppl, "ptq_kl": kl, "algorithm_seconds": 1.0}
        if qad is not None:
            r.update(qad=qad, qad_kl=qad_kl)
        return r

    return {"baseline": 50.0, "qad_steps": 60, "rows": [
        row("W4A16-INT4", "rtn", 49.9, 0.0050, 50.2, 0.0040),
        row("W4A16-INT4", "gptq", 50.05, 0.0010, 50.1, 0.0010),
        row("W3A16-INT3", "rtn", 51.0, 0.0200),
        row("W3A16-INT3", "gptq", 50.7, 0.0150),
        row("W8A8-INT8", "smoothquant", 50.1, None),
    ]}


def test_verdicts_in_perplexity_and_kl():
    lines = gap_verdicts(_rows())
    assert lines[0] == ("W4A16-INT4: GPTQ RTN has no perplexity gap to close (-0.100; GPTQ's gap +0.050); "
                        "closes 80% of RTN's KL (at least half)")
    assert lines[1] == ("W3A16-INT3: GPTQ closes 30% of RTN's perplexity gap (under half); "
                        "closes 25% of RTN's KL (under half)")
    assert len(lines) == 2  # no RTN / GPTQ pair for W8A8


def test_table_has_kl_columns_and_dashes_where_missing():
    text = format_table(_rows())
    head = text.splitlines()[1]
    assert "PTQ KL" in head and "QAD KL" in head
    int4 = text.splitlines()[2].split()
    assert int4[:2] == ["W4A16-INT4", "rtn"] and int4[4] == "0.00500" and int4[6] == "0.00400"
    sq = next(line for line in text.splitlines() if "smoothquant" in line).split()
    assert sq[4] == "-" and sq[5] == "-" and sq[6] == "-"
