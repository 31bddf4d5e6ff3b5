"""Hand-computed checks of the G-Blend math in gblend_ray.blend (eqs. 3, 6, 7).

Probe values are chosen to be exact in binary floating point (multiples of
1/8 or 1/4) so the worked numbers in the comments are exactly what the code sees.
"""

from __future__ import annotations

import json
import logging
import math

import pytest

from gblend_ray.core.blend import (
    Estimate,
    HeadEstimate,
    Measurement,
    estimate,
    floor_weight,
    generalization,
    ogr,
    overfitting,
    overfitting_change,
)

TOL = 1e-9
LOGGER = "gblend_ray.blend"


def approx(x):
    return pytest.approx(x, abs=TOL)


# Three heads, loss metric (O = L_V - L_T, G = LV_before - LV_after):
#
#   video: T 2.0 -> 1.0, V 2.5  -> 2.0
#          O_before = 0.5, O_after = 1.0, dO = 0.5,  G = 0.5
#          raw = 0.5 / 0.25 = 2,          OGR = |0.5 / 0.5| = 1
#   audio: T 2.0 -> 1.5, V 2.25 -> 2.0
#          O_before = 0.25, O_after = 0.5, dO = 0.25, G = 0.25
#          raw = 0.25 / 0.0625 = 4,       OGR = |0.25 / 0.25| = 1
#   fused: T 2.0 -> 0.25, V 2.5 -> 1.5
#          O_before = 0.5, O_after = 1.25, dO = 0.75, G = 1.0
#          raw = 1 / 0.5625 = 16/9,       OGR = |0.75 / 1| = 0.75
#
#   Z = 2 + 4 + 16/9 = 70/9
#   w_video = 2 / (70/9) = 18/70 = 9/35
#   w_audio = 4 / (70/9) = 36/70 = 18/35
#   w_fused = (16/9) / (70/9) = 16/70 = 8/35      (sum 35/35 = 1)
#
# The fused head generalises most (G = 1) yet gets the smallest weight
# because it overfits fastest (dO = 0.75): exactly the paper's point.
THREE = {
    "video": Measurement(train_before=2.0, val_before=2.5, train_after=1.0, val_after=2.0),
    "audio": Measurement(train_before=2.0, val_before=2.25, train_after=1.5, val_after=2.0),
    "fused": Measurement(train_before=2.0, val_before=2.5, train_after=0.25, val_after=1.5),
}


def test_overfitting_and_generalization_loss():
    assert overfitting(1.0, 2.0) == approx(1.0)  # L_V - L_T
    m = THREE["fused"]
    assert generalization(m) == approx(1.0)
    assert overfitting_change(m) == approx(0.75)
    assert ogr(m) == approx(0.75)
    assert ogr(THREE["video"]) == approx(1.0)
    assert ogr(THREE["audio"]) == approx(1.0)


def test_three_heads_loss_exact_eps0():
    est = estimate(THREE, eps=0.0)
    assert isinstance(est, Estimate)
    assert list(est.weights) == ["video", "audio", "fused"]
    assert est.weights["video"] == approx(9 / 35)
    assert est.weights["audio"] == approx(18 / 35)
    assert est.weights["fused"] == approx(8 / 35)
    assert sum(est.weights.values()) == approx(1.0)
    assert est.fallback is None
    assert est.heads["video"] == HeadEstimate(G=0.5, dO=0.5, ogr=1.0, raw=2.0, weight=est.weights["video"])
    assert est.heads["audio"].raw == approx(4.0)
    assert est.heads["fused"].G == approx(1.0)
    assert est.heads["fused"].dO == approx(0.75)
    assert est.heads["fused"].raw == approx(16 / 9)
    assert est.heads["fused"].ogr == approx(0.75)
    assert est.heads["fused"].weight == approx(8 / 35)


def test_three_heads_loss_default_eps():
    # Same probe with eps = 1e-8 in the denominator dO^2 + eps:
    #   raw_video = 0.5 / 0.25000001, raw_audio = 0.25 / 0.06250001, raw_fused = 1 / 0.56250001
    rv, ra, rf = 0.5 / 0.25000001, 0.25 / 0.06250001, 1.0 / 0.56250001
    z = rv + ra + rf
    w = estimate(THREE).weights
    assert w == {"video": approx(rv / z), "audio": approx(ra / z), "fused": approx(rf / z)}
    # eps only nudges the result: still 9/35, 18/35, 8/35 to ~1e-7.
    assert w["fused"] == pytest.approx(8 / 35, abs=1e-6)
    assert estimate(THREE).heads["audio"].raw == approx(ra)


# Accuracy metric (O = A_T - A_V, G = AV_after - AV_before):
#   video: T 0.5 -> 0.75, V 0.5 -> 0.625
#          O_before = 0, O_after = 0.125, dO = 0.125, G = 0.125
#          raw = 0.125 / 0.015625 = 8, OGR = 1
#   audio: T 0.25 -> 0.75, V 0.25 -> 0.5
#          O_before = 0, O_after = 0.25, dO = 0.25, G = 0.25
#          raw = 0.25 / 0.0625 = 4,  OGR = 1
#   Z = 12 -> w_video = 2/3, w_audio = 1/3
ACC = {
    "video": Measurement(train_before=0.5, val_before=0.5, train_after=0.75, val_after=0.625),
    "audio": Measurement(train_before=0.25, val_before=0.25, train_after=0.75, val_after=0.5),
}


def test_accuracy_metric_sign_flips():
    assert overfitting(0.75, 0.625, "accuracy") == approx(0.125)  # A_T - A_V
    assert overfitting(0.75, 0.625, "loss") == approx(-0.125)  # L_V - L_T
    assert generalization(ACC["video"], "accuracy") == approx(0.125)
    assert generalization(ACC["video"], "loss") == approx(-0.125)
    assert overfitting_change(ACC["audio"], "accuracy") == approx(0.25)
    assert overfitting_change(ACC["audio"], "loss") == approx(-0.25)

    est = estimate(ACC, metric="accuracy", eps=0.0)
    assert est.weights == {"video": approx(2 / 3), "audio": approx(1 / 3)}
    assert est.heads["video"].raw == approx(8.0)
    assert est.heads["audio"].raw == approx(4.0)
    assert est.fallback is None

    # Read as losses, the same numbers mean validation got *worse* for both
    # heads (G = -0.125 and -0.25), so nothing is usable -> uniform.
    as_loss = estimate(ACC, metric="loss")
    assert as_loss.fallback == "uniform"
    assert as_loss.weights == {"video": approx(0.5), "audio": approx(0.5)}


# Heads with G <= 0 get weight 0:
#   video, audio as in THREE: raw 2 and 4
#   fused: T 2.0 -> 1.0, V 2.0 -> 2.5  -> G = -0.5, O 0 -> 1.5, dO = 1.5, OGR = 3, raw = 0
#   text:  T 2.0 -> 1.0, V 2.0 -> 2.0  -> G = 0,    O 0 -> 1.0, dO = 1.0, OGR = inf, raw = 0
#   Z = 6 -> video 1/3, audio 2/3, fused 0, text 0
def test_nonpositive_g_gets_zero_weight(caplog):
    ms = {
        "video": THREE["video"],
        "audio": THREE["audio"],
        "fused": Measurement(2.0, 2.0, 1.0, 2.5),
        "text": Measurement(2.0, 2.0, 1.0, 2.0),
    }
    with caplog.at_level(logging.INFO, logger=LOGGER):
        est = estimate(ms, eps=0.0)
    assert est.weights == {
        "video": approx(1 / 3),
        "audio": approx(2 / 3),
        "fused": 0.0,
        "text": 0.0,
    }
    assert est.fallback is None
    assert est.heads["fused"].G == approx(-0.5)
    assert est.heads["fused"].dO == approx(1.5)
    assert est.heads["fused"].ogr == approx(3.0)
    assert est.heads["fused"].raw == 0.0
    assert est.heads["text"].G == 0.0
    assert est.heads["text"].ogr == math.inf
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("'fused'" in s and "-0.5" in s for s in infos)
    assert any("'text'" in s and "G=0" in s for s in infos)


# dO == 0 with G > 0:
#   video as in THREE: G = 0.5, dO = 0.5
#   audio: T 2.0 -> 1.5, V 2.5 -> 2.0: O 0.5 -> 0.5, dO = 0, G = 0.5
#   eps = 0.25: raw_video = 0.5 / (0.25 + 0.25) = 1, raw_audio = 0.5 / 0.25 = 2
#   -> video 1/3, audio 2/3
DO_ZERO = {
    "video": THREE["video"],
    "audio": Measurement(train_before=2.0, val_before=2.5, train_after=1.5, val_after=2.0),
}


def test_zero_overfitting_change_finite_with_eps():
    assert overfitting_change(DO_ZERO["audio"]) == 0.0
    assert ogr(DO_ZERO["audio"]) == 0.0
    est = estimate(DO_ZERO, eps=0.25)
    assert est.weights == {"video": approx(1 / 3), "audio": approx(2 / 3)}
    assert est.heads["audio"].raw == approx(2.0)
    assert est.heads["video"].raw == approx(1.0)

    # Default eps = 1e-8: raw_audio = 0.5 / 1e-8 = 5e7, raw_video = 0.5 / 0.25000001
    rv = 0.5 / 0.25000001
    w = estimate(DO_ZERO).weights
    assert w["audio"] == approx(5e7 / (5e7 + rv))
    assert w["video"] == approx(rv / (5e7 + rv))
    assert all(math.isfinite(x) for x in w.values())


def test_zero_overfitting_change_eps0_raises():
    with pytest.raises(ValueError, match=r"'audio'.*eps > 0"):
        estimate(DO_ZERO, eps=0.0)


def test_zero_overfitting_change_nonpositive_g_eps0_ok():
    # dO = 0 and G = 0 never divides: weight is just 0 (the other head takes all).
    ms = {"video": THREE["video"], "audio": Measurement(2.0, 2.0, 2.0, 2.0)}
    assert estimate(ms, eps=0.0).weights == {"video": approx(1.0), "audio": 0.0}


# Every G <= 0:
#   video: T 1.0 -> 0.5, V 1.0 -> 1.25: G = -0.25, O 0 -> 0.75, dO = 0.75, OGR = 3
#   audio: T 1.0 -> 0.5, V 1.0 -> 1.0:  G = 0,     O 0 -> 0.5,  dO = 0.5,  OGR = inf
ALL_BAD = {
    "video": Measurement(1.0, 1.0, 0.5, 1.25),
    "audio": Measurement(1.0, 1.0, 0.5, 1.0),
}


def test_all_nonpositive_falls_back_to_previous(caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        est = estimate(ALL_BAD, previous={"audio": 0.3, "video": 0.7})
    assert est.fallback == "previous"
    assert list(est.weights) == ["video", "audio"]  # measurement order, not previous's
    assert est.weights == {"video": approx(0.7), "audio": approx(0.3)}
    assert est.heads["video"].weight == approx(0.7)
    assert est.heads["video"].raw == 0.0
    assert est.heads["video"].G == approx(-0.25)
    assert est.heads["video"].ogr == approx(3.0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER]
    assert len(warnings) == 1
    assert "previous" in warnings[0].getMessage()


def test_all_nonpositive_falls_back_to_uniform(caplog):
    ms = dict(ALL_BAD, fused=Measurement(1.0, 1.0, 1.0, 1.5))  # G = -0.5
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        est = estimate(ms)
    assert est.fallback == "uniform"
    assert est.weights == {"video": approx(1 / 3), "audio": approx(1 / 3), "fused": approx(1 / 3)}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER]
    assert len(warnings) == 1
    assert "uniform" in warnings[0].getMessage()


def test_previous_ignored_when_some_g_positive():
    est = estimate(THREE, eps=0.0, previous={"video": 0.1, "audio": 0.1, "fused": 0.8})
    assert est.fallback is None
    assert est.weights["fused"] == approx(8 / 35)


def test_previous_head_mismatch_raises():
    with pytest.raises(ValueError, match=r"missing.*'audio'"):
        estimate(ALL_BAD, previous={"video": 1.0})
    with pytest.raises(ValueError, match=r"extra.*'text'"):
        estimate(ALL_BAD, previous={"video": 0.5, "audio": 0.25, "text": 0.25})


@pytest.mark.parametrize(
    "previous, pattern",
    [
        ({"video": 1.5, "audio": -0.5}, r"'audio'.*>= 0"),
        ({"video": 0.5, "audio": 0.4}, r"sum to 1"),
        ({"video": float("nan"), "audio": 0.5}, r"'video'.*finite"),
    ],
)
def test_previous_invalid_raises(previous, pattern):
    with pytest.raises(ValueError, match=pattern):
        estimate(ALL_BAD, previous=previous)


@pytest.mark.parametrize(
    "field, value, text",
    [
        ("val_after", float("nan"), "val_after is nan"),
        ("train_before", float("inf"), "train_before is inf"),
        ("val_before", float("-inf"), "val_before is -inf"),
    ],
)
def test_non_finite_probe_raises(field, value, text):
    values = {"train_before": 2.0, "val_before": 2.25, "train_after": 1.5, "val_after": 2.0}
    values[field] = value
    ms = {"video": THREE["video"], "audio": Measurement(**values)}
    with pytest.raises(ValueError) as exc:
        estimate(ms)
    assert f"probe for head 'audio': {text}" in str(exc.value)


def test_ogr_zero_generalization_is_inf_and_to_dict_none():
    m = Measurement(1.0, 1.0, 0.5, 1.0)  # G = 0, dO = 0.5
    assert ogr(m) == math.inf
    assert ogr(Measurement(1.0, 1.0, 1.0, 1.0)) == math.inf  # 0/0 documented as inf too
    # fused: G = 0 -> ogr inf; video: raw 2 takes all the weight
    est = estimate({"video": THREE["video"], "fused": m}, eps=0.0)
    d = est.to_dict()
    assert d["fallback"] is None
    assert d["weights"] == {"video": approx(1.0), "fused": 0.0}
    assert d["heads"]["fused"] == {"G": 0.0, "dO": 0.5, "ogr": None, "raw": 0.0, "weight": 0.0}
    assert d["heads"]["video"] == {
        "G": approx(0.5),
        "dO": approx(0.5),
        "ogr": approx(1.0),
        "raw": approx(2.0),
        "weight": approx(1.0),
    }
    json.dumps(d, allow_nan=False)  # really JSON-ready


def test_to_dict_fallback_roundtrip():
    d = estimate(ALL_BAD).to_dict()
    assert d["fallback"] == "uniform"
    assert d["weights"] == {"video": approx(0.5), "audio": approx(0.5)}
    assert d["heads"]["audio"]["ogr"] is None
    assert d["heads"]["video"]["ogr"] == approx(3.0)
    assert json.loads(json.dumps(d, allow_nan=False))["fallback"] == "uniform"


def test_bad_metric_empty_and_eps_raise():
    with pytest.raises(ValueError, match="'top1'"):
        estimate(THREE, metric="top1")
    with pytest.raises(ValueError, match="'top1'"):
        overfitting(1.0, 2.0, metric="top1")
    with pytest.raises(ValueError, match="'top1'"):
        ogr(THREE["video"], metric="top1")
    with pytest.raises(ValueError, match="empty"):
        estimate({})
    with pytest.raises(ValueError, match="eps"):
        estimate(THREE, eps=-1e-8)
    with pytest.raises(ValueError, match="eps"):
        estimate(THREE, eps=float("nan"))


# floor_weight: {video 0.2, audio 0.7, fused 0.1}, floor 0.3 on fused
#   others sum 0.9 must shrink to 0.7 -> scale 7/9
#   video 0.2 * 7/9 = 14/90, audio 0.7 * 7/9 = 49/90, fused 27/90 = 0.3  (sum 90/90)
def test_floor_weight_raises_and_rescales():
    w = {"video": 0.2, "audio": 0.7, "fused": 0.1}
    out = floor_weight(w, "fused", 0.3)
    assert list(out) == ["video", "audio", "fused"]
    assert out == {"video": approx(14 / 90), "audio": approx(49 / 90), "fused": approx(0.3)}
    assert sum(out.values()) == approx(1.0)
    assert out["audio"] / out["video"] == approx(0.7 / 0.2)  # proportions kept
    assert w == {"video": 0.2, "audio": 0.7, "fused": 0.1}  # input untouched


def test_floor_weight_noop_when_above_floor():
    w = {"video": 0.2, "audio": 0.4, "fused": 0.4}
    out = floor_weight(w, "fused", 0.3)
    assert out == w and out is not w
    assert floor_weight(w, "video", 0.2) == w  # exactly at floor
    assert floor_weight(w, "video", 0.0) == w


def test_floor_weight_full_floor_and_zero_others():
    # floor 1: others scaled by (1 - 1) / 0.8 = 0
    out = floor_weight({"video": 0.5, "audio": 0.3, "fused": 0.2}, "fused", 1.0)
    assert out == {"video": 0.0, "audio": 0.0, "fused": approx(1.0)}
    # all others 0 and head a hair under 1 (within the sum tolerance): head gets 1
    out = floor_weight({"fused": 1.0 - 5e-7, "video": 0.0}, "fused", 1.0)
    assert out == {"fused": 1.0, "video": 0.0}


def test_floor_weight_on_estimate_output():
    # 8/35 ~ 0.2286 < 0.5: others (27/35) scaled to 0.5 -> video 9/35 * 35/54 = 1/6, audio 1/3
    out = floor_weight(estimate(THREE, eps=0.0).weights, "fused", 0.5)
    assert out == {"video": approx(1 / 6), "audio": approx(1 / 3), "fused": approx(0.5)}


@pytest.mark.parametrize("floor", [-0.1, 1.1, float("nan")])
def test_floor_weight_bad_floor_raises(floor):
    with pytest.raises(ValueError, match="floor"):
        floor_weight({"video": 0.5, "fused": 0.5}, "fused", floor)


def test_floor_weight_bad_input_raises():
    with pytest.raises(ValueError, match="'text'"):
        floor_weight({"video": 0.5, "fused": 0.5}, "text", 0.3)
    with pytest.raises(ValueError, match="sum to 1"):
        floor_weight({"video": 0.5, "fused": 0.2}, "fused", 0.3)
    with pytest.raises(ValueError, match="'video'"):
        floor_weight({"video": -0.5, "fused": 1.5}, "fused", 0.3)
