"""The `lowbit bench recovery` table: each figure once, and where the learning rate came from."""

from engine.pipeline.recovery import format_table


def _encoder_result(settings):
    row = {"embedding_cosine": 0.999, "cls_embedding_cosine": 0.998}
    return {"scheme": "W4A4-NVFP4", "steps": 200, "kind": "encoder", "baseline": {"embedding_cosine": 1.0},
            "ptq": row, "qad": {"embedding_cosine": 0.9995, "cls_embedding_cosine": 0.999},
            "qad_recovered": 0.5, "qad_recovered_cls": 0.5, "qad_settings": settings}


def test_probed_lr_is_printed_once_with_its_origin():
    settings = {"lr": 3e-4, "batch_size": 32, "warmup_steps": 10, "dropout": "off",
                "lr_probe": {"chosen": 3e-4, "held_out_loss": {"1e-05": 0.3, "0.0001": 0.2, "0.0003": 0.1}}}
    line = next(x for x in format_table(_encoder_result(settings)).splitlines() if x.startswith("QAD settings"))
    assert line.count("0.0003") == 1
    assert "train.lr auto: probed 3 rates" in line
    assert "batch 32" in line and "warm-up 10" in line and "dropout off" in line


def test_fixed_lr_has_no_probe_note():
    settings = {"lr": 1e-4, "batch_size": 32, "warmup_steps": 10, "dropout": "off"}
    table = format_table(_encoder_result(settings))
    assert "QAD settings: lr 0.0001, batch 32" in table
    assert "probed" not in table
    assert "QAD recovers 50.0% of the PTQ sentence-embedding cosine gap" in table
