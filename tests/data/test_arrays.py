"""The on-disk array dataset format and its validation errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from gblend_ray.data.arrays import Dataset, DatasetError, load_dataset, save_dataset

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
