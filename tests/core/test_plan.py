import pytest

from gblend_ray.core.plan import (
    FUSED,
    Method,
    Segment,
    fixed_weights,
    lr_at,
    parse_method,
    plan_segments,
)

MODS = ["video", "audio"]


def test_parse_methods():
    assert parse_method("uni:audio", MODS) == Method("uni", modality="audio")
    assert parse_method("gblend", MODS, default_schedule="offline") == Method("gblend", schedule="offline")
    assert parse_method("gblend:online", MODS).name == "gblend:online"
    assert parse_method("naive", MODS).prediction_head == FUSED
    assert parse_method("uni:video", MODS).prediction_head == "video"


@pytest.mark.parametrize("bad, match", [("uni:depth", "lacks"), ("fancy", "unknown method"),
                                        ("gblend:sometimes", "offline or online"), ("naive:x", "no argument")])
def test_parse_method_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        parse_method(bad, MODS)


def test_fixed_weights():
    assert fixed_weights(parse_method("uni:audio", MODS), MODS) == {"video": 0.0, "audio": 1.0, FUSED: 0.0}
    assert fixed_weights(parse_method("naive", MODS), MODS) == {"video": 0.0, "audio": 0.0, FUSED: 1.0}
    assert fixed_weights(parse_method("aux", MODS), MODS) == pytest.approx({"video": 1 / 3, "audio": 1 / 3, FUSED: 1 / 3})
    assert fixed_weights(parse_method("gblend", MODS), MODS) is None


def test_online_segments_follow_warmup_then_super_epochs():
    segs = plan_segments(Method("gblend", schedule="online"), 22, warmup_epochs=10, super_epoch=5)
    assert segs == [Segment(0, 10, 10), Segment(10, 5, 5), Segment(15, 5, 5), Segment(20, 2, 2)]
    fixed = plan_segments(Method("gblend", schedule="online"), 22, 10, 5, probe_epochs=3)
    assert [s.probe_epochs for s in fixed] == [3, 3, 3, 3]


def test_offline_and_fixed_segments():
    assert plan_segments(Method("gblend", schedule="offline"), 30) == [Segment(0, 30, 30)]
    assert plan_segments(Method("gblend", schedule="offline"), 30, probe_epochs=8) == [Segment(0, 30, 8)]
    assert plan_segments(Method("naive"), 30) == [Segment(0, 30, 0)]
    assert not Segment(0, 30).estimates


def test_lr_schedules():
    assert lr_at(7, 0.1, "constant", 10) == 0.1
    assert lr_at(0, 0.1, "cosine", 10) == pytest.approx(0.1)
    assert lr_at(5, 0.1, "cosine", 10) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_at(0, 0.1, "step", 10)


def test_baseline_weights_and_segments():
    for kind in ("dropout", "early_stop"):
        assert fixed_weights(parse_method(kind, MODS), MODS) == {"video": 0.0, "audio": 0.0, FUSED: 1.0}
    assert fixed_weights(parse_method("uncertainty", MODS), MODS) == {"video": 1.0, "audio": 1.0, FUSED: 1.0}
    pretrain = parse_method("pretrain", MODS)
    assert fixed_weights(pretrain, MODS, "pretrain") == {"video": 1.0, "audio": 1.0, FUSED: 0.0}
    assert fixed_weights(pretrain, MODS, "finetune") == {"video": 0.0, "audio": 0.0, FUSED: 1.0}
    assert plan_segments(pretrain, 30) == [Segment(0, 30, phase="pretrain"), Segment(30, 30, phase="finetune")]
    assert plan_segments(pretrain, 30, pretrain_epochs=12) == [Segment(0, 12, phase="pretrain"),
                                                               Segment(12, 30, phase="finetune")]
