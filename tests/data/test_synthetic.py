import numpy as np
import pytest
import yaml

from gblend_ray.core.spec import RunSpec
from gblend_ray.data.arrays import load_dataset
from gblend_ray.data.synthetic import (
    AV3,
    PRESETS,
    generate_preset,
    make_av3,
    make_av_overfit,
)
from gblend_ray.training.runner import run_inline


def _arrays(ds):
    return {**ds.modalities, "labels": ds.labels, "split": ds.split}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_av_overfit_is_unchanged_and_deterministic(tmp_path):
    first = load_dataset(generate_preset("av-overfit", tmp_path / "a", seed=0))
    again = load_dataset(generate_preset("av-overfit", tmp_path / "b", seed=0))
    assert list(first.modalities) == ["video", "audio"]
    assert first.shapes() == {"video": (16,), "audio": (512,)}
    assert first.modalities["video"].shape == (4000, 16) and first.modalities["audio"].shape == (4000, 512)
    assert first.classes == [f"class{i}" for i in range(10)]
    _assert_same(_arrays(first), _arrays(again))
    assert yaml.safe_load((tmp_path / "a" / "generator.yaml").read_text())["preset"] == "av-overfit"


def test_av_weak_audio_is_av_overfit_with_a_weaker_audio_signal(tmp_path):
    """The quickstart's preset: the same video, labels, split and audio noise as av-overfit;
    only audio's class means are shorter (0.18 against 0.2)."""
    weak = load_dataset(generate_preset("av-weak-audio", tmp_path / "w", seed=0))
    base = load_dataset(generate_preset("av-overfit", tmp_path / "b", seed=0))
    assert weak.name == "av-weak-audio" and PRESETS["av-weak-audio"].audio_signal == 0.18
    for key in ("video", "labels", "split"):
        np.testing.assert_array_equal(_arrays(weak)[key], _arrays(base)[key], err_msg=key)
    train = base.split == "train"
    # audio = means[y] + noise: the noise is shared, so the per-class means shrink by 0.18 / 0.2
    diff = (base.modalities["audio"] - weak.modalities["audio"])[train]
    mean_base = np.stack([base.modalities["audio"][train & (base.labels == k)].mean(0) for k in range(10)])
    per_class = np.stack([diff[base.labels[train] == k].std(0).max() for k in range(10)])
    assert per_class.max() < 1e-5  # within a class the two differ by a constant: the mean's change
    shift = np.stack([diff[base.labels[train] == k][0] for k in range(10)])
    true_means = shift / (1 - 0.18 / 0.2)
    np.testing.assert_allclose(np.linalg.norm(true_means, axis=1), 0.2 * np.sqrt(512) / 2, rtol=1e-4)
    assert np.corrcoef(true_means.ravel(), mean_base.ravel())[0, 1] > 0.5


def test_av3_writes_a_loadable_three_modality_dataset(tmp_path):
    ds = load_dataset(generate_preset("av3", tmp_path / "av3", seed=0))
    p = PRESETS["av3"]
    assert isinstance(p, AV3)
    assert ds.name == "av3" and ds.task == "multiclass"
    assert list(ds.modalities) == ["video", "audio", "flow"]
    assert ds.shapes() == {"video": (p.video_dim,), "audio": (p.audio_dim,), "flow": (p.flow_dim,)}
    assert ds.shapes() == {"video": (16,), "audio": (512,), "flow": (128,)}
    assert ds.num_samples == 4000 and ds.classes == [f"class{i}" for i in range(10)]
    assert sorted(set(ds.split)) == ["test", "train", "val"]
    generator = yaml.safe_load((tmp_path / "av3" / "generator.yaml").read_text())
    assert generator["preset"] == "av3" and generator["seed"] == 0
    assert generator["flow_dim"] == 128 and generator["flow_signal"] == p.flow_signal


def test_av3_is_deterministic_by_seed_and_extends_av_overfit():
    p = PRESETS["av3"]
    mods, labels, split = make_av3(p, 0)
    again, labels2, split2 = make_av3(p, 0)
    _assert_same({**mods, "labels": labels, "split": split}, {**again, "labels": labels2, "split": split2})
    other, _, _ = make_av3(p, 1)
    assert not np.allclose(mods["flow"], other["flow"])
    # video, audio, labels and split are av-overfit's draws; flow comes from its own stream
    av, av_labels, av_split = make_av_overfit(PRESETS["av-overfit"], 0)
    _assert_same({**av, "labels": av_labels, "split": av_split},
                 {"video": mods["video"], "audio": mods["audio"], "labels": labels, "split": split})
    # flow's signal is the within-pair contrast: the two classes of a pair have opposite means
    flow, train = mods["flow"], split == "train"
    means = np.stack([flow[train & (labels == k)].mean(0) for k in range(p.num_classes)])
    assert np.all(np.sum(means[0::2] * means[1::2], axis=1) < 0)


def test_unknown_preset_lists_av3(tmp_path):
    with pytest.raises(ValueError, match="av3"):
        generate_preset("nope", tmp_path / "x")


def test_av3_gblend_online_weighs_four_heads(tmp_path):
    spec = RunSpec()
    spec.data.path = str(tmp_path / "av3")
    spec.data.preset = "av3"
    spec.method = "gblend:online"
    spec.train.epochs = 4
    spec.train.threads = 1
    spec.blend.warmup_epochs = 2
    spec.blend.super_epoch = 2
    spec.model.hidden_dim = 32
    spec.model.feature_dim = 16
    spec.model.fusion_hidden_dim = 32
    spec.tracking.backend = "none"
    results = run_inline(spec)
    assert results["trajectory"]
    for record in results["trajectory"]:
        weights = record["weights"]
        assert sorted(weights) == sorted(["video", "audio", "flow", "fused"])
        assert sum(weights.values()) == pytest.approx(1.0)
        assert all(w >= 0 for w in weights.values())
    # every round is an estimate (no fallback), and the memorizing audio stream weighs less than
    # flow, which overfits more slowly (the preset's generative model)
    first = results["trajectory"][0]
    assert all(r["fallback"] is None for r in results["trajectory"])
    assert first["heads"]["audio"]["estimated_weight"] < first["heads"]["flow"]["estimated_weight"]
