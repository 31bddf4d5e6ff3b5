"""The G-Blend splits: T, V, T' and test, drawn or from split.npy, and their checks."""

import time
from pathlib import Path

import numpy as np
import pytest

from gblend_ray.core.spec import RunSpec
from gblend_ray.data.arrays import Dataset, DatasetError, load_dataset, save_dataset
from gblend_ray.data.loading import ensure_dataset, run_splits
from gblend_ray.data.splits import Splits, check_splits, make_splits

CLASSES = ["c0", "c1", "c2"]


def _arrays(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    mods = {"video": rng.normal(size=(n, 4)), "audio": rng.normal(size=(n, 2, 3)).astype(np.float32)}
    return mods, np.arange(n) % len(CLASSES)


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


# --------------------------------------------------------------------------- checks


def _saved(tmp_path: Path, split, labels=None, n=None) -> Dataset:
    n = len(split) if n is None else n
    labels = np.arange(n) % 3 if labels is None else labels
    rng = np.random.default_rng(0)
    path = save_dataset(tmp_path / "ds", {"v": rng.standard_normal((n, 2))}, labels, ["a", "b", "c"], split=split)
    return load_dataset(path)


def _spec(ds: Dataset) -> RunSpec:
    spec = RunSpec()
    spec.data.path = str(ds.path)
    return spec


def test_a_split_without_test_rows_fails_before_training(tmp_path):
    ds = _saved(tmp_path, ["train"] * 50 + ["val"] * 10)
    with pytest.raises(DatasetError, match=r"split\.npy: the test part is empty \(T \d+, V \d+, T' \d+, test 0\)"):
        run_splits(_spec(ds), ds)


def test_a_train_split_of_one_class_fails_naming_the_missing_classes(tmp_path):
    labels = np.r_[np.zeros(40, int), np.arange(20) % 3]
    ds = _saved(tmp_path, ["train"] * 40 + ["test"] * 20, labels=labels)
    with pytest.raises(DatasetError, match=r"no sample of 2 of 3 classes \(b, c\)"):
        run_splits(_spec(ds), ds)


def test_a_class_missing_from_v_or_test_is_a_warning(tmp_path, caplog):
    labels = np.r_[np.arange(60) % 3, np.zeros(10, int)]
    ds = _saved(tmp_path, ["train"] * 60 + ["test"] * 10, labels=labels)
    spec = _spec(ds)
    spec.data.heldout_fraction = 0.5  # V of 30: not small
    splits = run_splits(spec, ds)
    warnings = check_splits(ds, splits)
    assert len(warnings) == 1 and "the test split has no sample of 2 class(es) (b, c" in warnings[0]
    assert any("the test split has no sample" in r.message for r in caplog.records)


def test_a_small_v_is_a_warning_naming_its_size_and_the_setting(tmp_path):
    ds = _saved(tmp_path, ["train"] * 60 + ["test"] * 12)
    (warning,) = check_splits(ds, run_splits(_spec(ds), ds))  # V: 10% of 60
    assert "V holds 6 samples" in warning and "steps of 1/6" in warning and "data.heldout_fraction" in warning


def test_a_preset_is_never_written_over_user_files(tmp_path):
    data = tmp_path / "mine"
    data.mkdir()
    (data / "video.npy").write_bytes(b"user data")
    spec = RunSpec()
    spec.data.path, spec.data.preset = str(data), "av-overfit"
    with pytest.raises(DatasetError, match=r"mine: has no meta.yaml.*not empty \(video.npy\).*only written into a new "
                                           r"or empty directory"):
        ensure_dataset(spec)
    assert (data / "video.npy").read_bytes() == b"user data" and sorted(p.name for p in data.iterdir()) == ["video.npy"]
    spec.data.path = str(tmp_path / "new")
    assert ensure_dataset(spec).num_classes == 10  # a new directory gets the preset


RACER = """
import hashlib, os, sys, time
import numpy as np
from gblend_ray.core.spec import RunSpec
from gblend_ray.data.loading import ensure_dataset
spec = RunSpec()
spec.data.path, spec.data.preset = sys.argv[1], "av-weak-audio"
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
ds = ensure_dataset(spec)
digest = hashlib.sha256()
for m in sorted(ds.modalities):
    digest.update(np.ascontiguousarray(ds.modalities[m]).tobytes())
digest.update(np.ascontiguousarray(ds.labels).tobytes())
print(digest.hexdigest())
"""


def test_processes_that_race_to_write_a_preset_all_read_it_whole(tmp_path):
    """A Tuner's trials each load their data: started at once on a new preset directory,
    every one reads the same whole data set (none a half-written array), and no scratch
    directory is left beside it."""
    import subprocess
    import sys

    data, go = tmp_path / "data" / "av-weak-audio", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(data), str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    time.sleep(3)  # each has imported torch and waits
    go.touch()
    done = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in done]
    assert len({out.strip() for out, _ in done}) == 1
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["av-weak-audio"]
    assert load_dataset(data).num_classes == 10
