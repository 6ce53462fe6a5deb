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


def _held_rows():
    res = _rows()
    res["held_out"] = {"blocks": 256, "pool": 900, "baseline": 25.0}
    extra = {("W4A16-INT4", "rtn"): (25.2, 0.0050, 25.4, 0.0060), ("W4A16-INT4", "gptq"): (25.05, 0.0010, 25.1, 0.0015),
             ("W3A16-INT3", "rtn"): (25.8, 0.0200, None, None), ("W3A16-INT3", "gptq"): (25.6, 0.0150, None, None)}
    for r in res["rows"]:
        v = extra.get((r["scheme"], r["algorithm"]))
        if v:
            r.update(ptq_held=v[0], ptq_held_kl=v[1])
            if v[2] is not None:
                r.update(qad_held=v[2], qad_held_kl=v[3])
    return res


def test_verdicts_judge_on_the_held_out_blocks_and_keep_the_eval_set_figures():
    lines = gap_verdicts(_held_rows())
    assert lines[0] == ("W4A16-INT4: GPTQ on 256 held-out blocks closes 75% of RTN's perplexity gap (at least half); "
                        "closes 80% of RTN's KL (at least half) | eval set: RTN has no perplexity gap to close "
                        "(-0.100; GPTQ's gap +0.050); closes 80% of RTN's KL")
    assert lines[1].startswith("W3A16-INT3: GPTQ on 256 held-out blocks closes 25% of RTN's perplexity gap (under half)")
    assert lines[1].endswith("| eval set: closes 30% of RTN's perplexity gap; closes 25% of RTN's KL")


def test_table_prints_held_out_ratio_and_kl_next_to_the_eval_set_columns():
    lines = format_table(_held_rows()).splitlines()
    assert lines[1].startswith("held-out: 256 of the 900 training-pool blocks") and "25.000" in lines[1]
    head = lines[2].split()
    assert head[2:4] == ["eval", "ppl"] and head.count("KL") == 4 and "PTQ x" in lines[2] and "QAD x" in lines[2]
    int4 = lines[3].split()
    assert int4[7:11] == ["1.00800", "0.00500", "1.01600", "0.00600"]
    int3 = lines[5].split()
    assert int3[7:11] == ["1.03200", "0.02000", "-", "-"]


def test_held_out_rows_are_read_neither_by_calibration_nor_by_qad():
    import torch

    from engine.io.demo import demo_recipe_dict
    from engine.pipeline.ptqbench import unread_blocks
    from engine.recipe import Recipe

    r = Recipe.from_dict(demo_recipe_dict("ptq"))  # batch 8, 8 calibration batches, seed 0
    n = 981
    rows = unread_blocks(r, n, qad_steps=60)
    # QAD's stream: epoch 0 is a seeded permutation of the pool, 60 steps x 8 blocks read from its start
    qad = set(torch.randperm(n, generator=torch.Generator().manual_seed(r.seed * 1_000_003)).tolist()[:480])
    assert min(rows) >= 64 and not set(rows) & qad and len(rows) == n - len(qad | set(range(64)))
    assert unread_blocks(r, n, qad_steps=0) == list(range(64, n))
    # lr 'auto': the probe's held-out slice (the pool's last tenth) is read too
    auto = unread_blocks(r.with_updates({"train.lr": "auto"}), n, qad_steps=60)
    assert set(auto) < set(rows) and max(auto) < n - 98


def test_bench_runs_judge_the_saved_students_on_the_unread_blocks(tiny_llama_dir, text_file, eval_text_file, tmp_path):
    """One cell end to end on a tiny Llama: the held-out figures come from the saved PTQ and QAD students."""
    from engine.pipeline.ptqbench import ptq_bench
    from engine.recipe import Recipe

    r = Recipe.from_dict({"model": {"path": str(tiny_llama_dir)},
                          "data": {"path": str(text_file), "eval_path": str(eval_text_file), "seq_len": 32,
                                   "batch_size": 2, "calib_batches": 2, "eval_batches": 1},
                          "quant": {"scheme": "W4A16-INT4"}, "train": {"eval_every": 0, "checkpoint_every": 0},
                          "device": "cpu"})
    res = ptq_bench(r, [("W4A16-INT4", "rtn")], qad_steps=2, workdir=tmp_path, log=lambda m: None,
                    held_out_blocks=6)
    held, row = res["held_out"], res["rows"][0]
    assert held["blocks"] == 6 and held["pool"] > 10 and held["baseline"] > 1
    assert row["ptq_held"] > 1 and row["ptq_held_kl"] > 0 and row["qad_held"] > 1 and row["qad_held_kl"] > 0
    assert "held-out: 6 of the" in format_table(res)
