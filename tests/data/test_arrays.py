"""Tests for gblend_ray.data: the on-disk format, its validation errors, and make_splits."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from gblend_ray.data.arrays import Dataset, DatasetError, load_dataset, save_dataset
from gblend_ray.data.splits import Splits, make_splits

CLASSES = ["c0", "c1", "c2"]


def _arrays(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    mods = {"video": rng.normal(size=(n, 4)), "audio": rng.normal(size=(n, 2, 3)).astype(np.float32)}
    labels = np.arange(n) % len(CLASSES)
    return mods, labels


@pytest.fixture
def ds_dir(tmp_path: Path) -> Path:
    mods, labels = _arrays()
    return save_dataset(tmp_path / "ds", mods, labels, CLASSES, name="toy")


def _err(file: Path | str, hint: str) -> str:
    return re.escape(str(file)) + ".*" + hint


# ---------------------------------------------------------------- round trip

def test_round_trip(tmp_path: Path) -> None:
    mods, labels = _arrays()
    split = np.array(["train"] * 40 + ["val"] * 10 + ["test"] * 10)
    path = save_dataset(tmp_path / "a" / "b", mods, labels, CLASSES, split=split, name="toy")
    assert path == (tmp_path / "a" / "b").resolve() and (path / "meta.yaml").is_file()
    ds = load_dataset(path)
    assert isinstance(ds, Dataset)
    assert ds.name == "toy" and ds.task == "multiclass" and ds.classes == CLASSES
    assert list(ds.modalities) == ["video", "audio"]  # meta order preserved
    assert ds.shapes() == {"video": (4,), "audio": (2, 3)}
    for k, v in mods.items():
        assert ds.modalities[k].dtype == np.float32
        np.testing.assert_allclose(ds.modalities[k], v.astype(np.float32))
    assert ds.labels.dtype == np.int64 and np.array_equal(ds.labels, labels)
    assert ds.split is not None and list(ds.split) == list(split)
    assert ds.num_samples == 60 and ds.num_classes == 3 and ds.path == path


def test_round_trip_multilabel_and_defaults(tmp_path: Path) -> None:
    mods, _ = _arrays(20)
    labels = (np.random.default_rng(1).random((20, 3)) > 0.5).astype(np.int64)
    path = save_dataset(tmp_path / "ml", mods, labels, CLASSES, task="multilabel")
    ds = load_dataset(path)
    assert ds.task == "multilabel" and ds.name == "ml" and ds.split is None
    assert ds.labels.dtype == np.float32 and np.array_equal(ds.labels, labels)


def test_int_modality_converted_and_stale_split_removed(tmp_path: Path) -> None:
    mods, labels = _arrays(30)
    path = save_dataset(tmp_path / "d", mods, labels, CLASSES, split=["train"] * 30)
    np.save(path / "video.npy", np.arange(30 * 4, dtype=np.int32).reshape(30, 4))
    assert load_dataset(path).modalities["video"].dtype == np.float32
    save_dataset(path, mods, labels, CLASSES)  # re-save without a split
    assert load_dataset(path).split is None


def test_meta_yaml_written_in_documented_form(ds_dir: Path) -> None:
    meta = yaml.safe_load((ds_dir / "meta.yaml").read_text())
    assert meta == {"name": "toy", "task": "multiclass", "classes": CLASSES,
                    "modalities": {"video": {"shape": [4]}, "audio": {"shape": [2, 3]}}}


# ---------------------------------------------------------------- errors

def test_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=_err(tmp_path / "nope", "does not exist")):
        load_dataset(tmp_path / "nope")


def test_missing_meta(ds_dir: Path) -> None:
    (ds_dir / "meta.yaml").unlink()
    with pytest.raises(DatasetError, match=_err(ds_dir / "meta.yaml", "missing meta.yaml.*classes")):
        load_dataset(ds_dir)


def test_bad_yaml(ds_dir: Path) -> None:
    (ds_dir / "meta.yaml").write_text("classes: [a, b\nmodalities: {")
    with pytest.raises(DatasetError, match=_err(ds_dir / "meta.yaml", "invalid YAML.*fix")):
        load_dataset(ds_dir)


def _edit_meta(ds_dir: Path, **changes) -> None:
    meta = yaml.safe_load((ds_dir / "meta.yaml").read_text())
    for k, v in changes.items():
        if v is None:
            meta.pop(k)
        else:
            meta[k] = v
    (ds_dir / "meta.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))


def test_missing_key(ds_dir: Path) -> None:
    _edit_meta(ds_dir, classes=None)
    with pytest.raises(DatasetError, match=_err(ds_dir / "meta.yaml", "missing required key 'classes'")):
        load_dataset(ds_dir)


def test_unknown_task(ds_dir: Path) -> None:
    _edit_meta(ds_dir, task="regression")
    with pytest.raises(DatasetError, match=_err(ds_dir / "meta.yaml", "'regression'.*use one of.*multilabel")):
        load_dataset(ds_dir)
    with pytest.raises(DatasetError, match="task 'regression'"):
        save_dataset(ds_dir, *_arrays(), CLASSES, task="regression")


def test_missing_modality_npy(ds_dir: Path) -> None:
    (ds_dir / "audio.npy").unlink()
    with pytest.raises(DatasetError, match=_err(ds_dir / "audio.npy", "missing.*'audio'.*numpy.save")):
        load_dataset(ds_dir)


def test_shape_mismatch_vs_meta(ds_dir: Path) -> None:
    _edit_meta(ds_dir, modalities={"video": {"shape": [5]}, "audio": {"shape": [2, 3]}})
    with pytest.raises(DatasetError, match=_err(ds_dir / "video.npy", r"\(4,\).*shape = \[5\].*fix")):
        load_dataset(ds_dir)


def test_bad_shape_spec(ds_dir: Path) -> None:
    _edit_meta(ds_dir, modalities={"video": {"shape": [0]}, "audio": {"shape": [2, 3]}})
    with pytest.raises(DatasetError, match=_err(ds_dir / "meta.yaml", "modalities.video.shape.*positive")):
        load_dataset(ds_dir)


def test_reserved_modality_name(ds_dir: Path) -> None:
    _edit_meta(ds_dir, modalities={"labels": {"shape": [1]}})
    with pytest.raises(DatasetError, match=_err(ds_dir / "meta.yaml", "'labels' is not allowed")):
        load_dataset(ds_dir)


def test_labels_different_n(ds_dir: Path) -> None:
    np.save(ds_dir / "labels.npy", np.zeros(59, dtype=np.int64))
    with pytest.raises(DatasetError, match=_err(ds_dir / "labels.npy", "59 samples.*video.npy has 60.*one row")):
        load_dataset(ds_dir)


def test_modality_different_n(ds_dir: Path) -> None:
    np.save(ds_dir / "audio.npy", np.zeros((61, 2, 3), dtype=np.float32))
    with pytest.raises(DatasetError, match=_err(ds_dir / "audio.npy", "61 samples.*has 60")):
        load_dataset(ds_dir)


def test_label_out_of_range(ds_dir: Path) -> None:
    labels = np.arange(60) % 3
    labels[7] = 3
    np.save(ds_dir / "labels.npy", labels)
    with pytest.raises(DatasetError, match=_err(ds_dir / "labels.npy", r"label 3 at sample 7.*\[0, 3\)")):
        load_dataset(ds_dir)
    labels[7] = -1
    np.save(ds_dir / "labels.npy", labels)
    with pytest.raises(DatasetError, match=_err(ds_dir / "labels.npy", "label -1 at sample 7")):
        load_dataset(ds_dir)


def test_multiclass_labels_wrong_rank(ds_dir: Path) -> None:
    np.save(ds_dir / "labels.npy", np.eye(3)[np.arange(60) % 3])
    with pytest.raises(DatasetError, match=_err(ds_dir / "labels.npy", "multiclass needs shape.*multilabel")):
        load_dataset(ds_dir)


def test_multilabel_non_binary(tmp_path: Path) -> None:
    mods, _ = _arrays(10)
    labels = np.zeros((10, 3))
    labels[2, 1] = 0.5
    with pytest.raises(DatasetError, match=_err(tmp_path / "m" / "labels.npy", "0 or 1")):
        save_dataset(tmp_path / "m", mods, labels, CLASSES, task="multilabel")


def test_nan_in_modality(ds_dir: Path) -> None:
    video = np.ones((60, 4))
    video[11, 2] = np.nan
    np.save(ds_dir / "video.npy", video)
    with pytest.raises(DatasetError, match=_err(ds_dir / "video.npy", "NaN/inf.*sample 11.*clean")):
        load_dataset(ds_dir)


def test_inf_after_float32_cast(ds_dir: Path) -> None:
    video = np.ones((60, 4))
    video[0, 0] = 1e300  # finite in float64, inf in float32
    np.save(ds_dir / "video.npy", video)
    with pytest.raises(DatasetError, match=_err(ds_dir / "video.npy", "NaN/inf")):
        load_dataset(ds_dir)


def test_bad_split_value(ds_dir: Path) -> None:
    split = np.array(["train"] * 60, dtype="<U10")
    split[5] = "validation"
    np.save(ds_dir / "split.npy", split)
    with pytest.raises(DatasetError, match=_err(ds_dir / "split.npy", "'validation' at sample 5.*one of")):
        load_dataset(ds_dir)


def test_object_split_refused(ds_dir: Path) -> None:
    np.save(ds_dir / "split.npy", np.array(["train"] * 60, dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match=_err(ds_dir / "split.npy", "object array")):
        load_dataset(ds_dir)


def test_error_is_value_error() -> None:
    assert issubclass(DatasetError, ValueError)


# ---------------------------------------------------------------- splits

def _dataset(n: int = 600, probs=(0.5, 0.3, 0.2), split=None, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(probs), size=n, p=probs).astype(np.int64)
    return Dataset(None, "mem", "multiclass", [f"c{i}" for i in range(len(probs))],
                   {"x": rng.normal(size=(n, 2)).astype(np.float32)}, labels, split)


def _check_invariants(s: Splits, n: int) -> None:
    for name in Splits.FIELDS:
        a = getattr(s, name)
        assert a.dtype == np.int64 and np.all(np.diff(a) > 0), name  # sorted, no duplicates
    assert not set(s.train) & set(s.heldout)
    assert set(s.train_subset) <= set(s.train)
    outside = set(s.val) | set(s.test)
    assert not (set(s.heldout) | set(s.train_subset) | set(s.train)) & outside
    assert not set(s.val) & set(s.test)
    assert len(s.train) + len(s.heldout) + len(s.val) + len(s.test) == n


def test_generated_splits_invariants_and_sizes() -> None:
    ds = _dataset()
    s = make_splits(ds, heldout_fraction=0.1, seed=3)
    _check_invariants(s, 600)
    assert s.sizes() == {"train": 420 - 42, "heldout": 42, "train_subset": 42, "val": 60, "test": 120}
    d = s.to_dict()
    assert list(d) == list(Splits.FIELDS) and all(type(i) is int for i in d["heldout"])
    assert Splits.from_dict(d) == s


def test_heldout_and_val_test_stratified() -> None:
    ds = _dataset(n=2000)
    s = make_splits(ds, heldout_fraction=0.2, seed=1)
    train_split = np.concatenate([s.train, s.heldout])
    for part in (s.heldout, s.val, s.test):
        for c in range(3):
            want = np.mean(ds.labels[train_split] == c) if part is s.heldout else np.mean(ds.labels == c)
            assert abs(np.mean(ds.labels[part] == c) - want) < 0.01, (c, len(part))


def test_heldout_has_every_class_even_when_rare() -> None:
    ds = _dataset(n=300, probs=(0.96, 0.02, 0.02))
    s = make_splits(ds, heldout_fraction=0.05, seed=0)
    assert set(ds.labels[s.heldout]) == {0, 1, 2}
    assert set(ds.labels[s.train]) == {0, 1, 2}  # and T still sees every class


def test_deterministic_by_seed() -> None:
    ds = _dataset()
    a, b = make_splits(ds, seed=7), make_splits(ds, seed=7)
    assert a == b and a.to_dict() == b.to_dict()
    c = make_splits(ds, seed=8)
    assert not np.array_equal(a.heldout, c.heldout)


def test_given_split_respected() -> None:
    n = 200
    split = np.array(["train", "val", "test", "train"] * (n // 4))
    ds = _dataset(n=n, split=split)
    for seed in (0, 1):
        s = make_splits(ds, heldout_fraction=0.25, seed=seed, val_fraction=0.3, test_fraction=0.3)
        _check_invariants(s, n)
        assert np.array_equal(s.val, np.flatnonzero(split == "val"))
        assert np.array_equal(s.test, np.flatnonzero(split == "test"))
        assert np.array_equal(np.union1d(s.train, s.heldout), np.flatnonzero(split == "train"))
        assert len(s.heldout) == round(0.25 * 100)


def test_given_split_from_disk(tmp_path: Path) -> None:
    mods, labels = _arrays()
    split = np.array(["test"] * 10 + ["train"] * 40 + ["val"] * 10)
    ds = load_dataset(save_dataset(tmp_path / "d", mods, labels, CLASSES, split=split))
    s = make_splits(ds, seed=0)
    assert set(np.concatenate([s.train, s.heldout])) == set(range(10, 50))
    assert list(s.test) == list(range(10)) and list(s.val) == list(range(50, 60))


def test_default_subset_size_equals_heldout_and_caps() -> None:
    ds = _dataset()
    s = make_splits(ds, seed=0)
    assert len(s.train_subset) == len(s.heldout) > 0
    s = make_splits(ds, subset_size=17, seed=0)
    assert len(s.train_subset) == 17
    s = make_splits(ds, subset_size=10**6, seed=0)
    assert np.array_equal(s.train_subset, s.train)


def test_multilabel_splits() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random((300, 4)) > 0.7).astype(np.float32)
    ds = Dataset(None, "ml", "multilabel", list("abcd"), {"x": np.zeros((300, 1), np.float32)}, labels, None)
    s = make_splits(ds, seed=0)
    _check_invariants(s, 300)
    assert len(s.heldout) == round(0.1 * len(np.union1d(s.train, s.heldout)))


@pytest.mark.parametrize("kwargs, arg", [
    ({"heldout_fraction": 0.0}, "heldout_fraction"),
    ({"heldout_fraction": 1.0}, "heldout_fraction"),
    ({"val_fraction": -0.1}, "val_fraction"),
    ({"test_fraction": 1.5}, "test_fraction"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction \\+ test_fraction"),
    ({"subset_size": 0}, "subset_size"),
    ({"seed": "x"}, "seed"),
])
def test_bad_arguments(kwargs, arg) -> None:
    with pytest.raises(ValueError, match=arg):
        make_splits(_dataset(), **kwargs)


def test_too_small_train_split() -> None:
    ds = _dataset(n=4, split=np.array(["train", "val", "test", "test"]))
    with pytest.raises(ValueError, match="train split has 1 samples"):
        make_splits(ds)
