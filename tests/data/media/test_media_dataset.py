"""The media data layer on real mp4 files (H.264 + AAC, written by ``testmedia``)."""

import csv
import dataclasses
import math
import multiprocessing
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torchaudio.functional import melscale_fbanks

from gblend_ray.core.spec import MediaSpec
from gblend_ray.data.media.clips import KINETICS_MEAN, KINETICS_STD, plan_clips
from gblend_ray.data.media.dataset import load_media_dataset
from gblend_ray.data.media.manifest import MediaError, read_manifest
from gblend_ray.data.media.testmedia import tone_hz, write_clip, write_test_media
from gblend_ray.data.splits import make_splits
from gblend_ray.training.engine import sequential_order

FPS, SECONDS, SR = 12, 1.5, 16000
SPEC = MediaSpec(frames=4, stride=2, resize=40, size=32, sample_rate=SR, n_mels=16, mel_frames=20,
                 eval_clips=3, num_workers=0)
N_FRAMES = int(FPS * SECONDS)  # 18
SPAN = SPEC.frames * SPEC.stride  # 8


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    return write_test_media(tmp_path_factory.mktemp("media"), classes=3, per_class=4, seconds=SECONDS, fps=FPS,
                            size=48, sample_rate=SR)


@pytest.fixture(scope="module")
def dataset(media):
    return load_media_dataset(media, SPEC)


def one_batch(data, positions, *, train=False, epoch=0):
    (batch,) = list(data.batches([torch.as_tensor(positions)], train=train, epoch=epoch))
    return batch


def write_manifest(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def noise_frames(n, h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, h, w, 3), dtype=np.uint8)


def tone(seconds, f=440.0):
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)


# ------------------------------------------------------------------ dataset and batches


def test_load_reads_manifest_meta_and_files(media, dataset):
    assert dataset.path == media
    assert dataset.name == media.parent.name
    assert dataset.task == "multiclass" and dataset.classes == ["class0", "class1", "class2"]
    assert dataset.labels.dtype == np.int64 and dataset.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert dataset.split is None and dataset.skipped == {}
    assert dataset.num_samples == 12 and dataset.num_classes == 3
    assert dataset.shapes() == {"video": (3, 4, 32, 32), "audio": (1, 16, 20)}
    clip = dataset.clips[0]
    assert (clip.first, clip.stop, clip.info.fps, clip.info.frames) == (0, N_FRAMES, FPS, N_FRAMES)
    assert (clip.info.height, clip.info.width) == (48, 64)
    # data.path may name the directory that holds manifest.csv
    assert load_media_dataset(media.parent, SPEC, ["video"]).shapes() == {"video": (3, 4, 32, 32)}


def test_batches_follow_the_batch_source_contract(dataset):
    data = dataset.source(np.arange(12), train=False)
    order = sequential_order(12, 5)
    batches = list(data.batches(order, train=False, epoch=0))
    assert [len(y) for _, y in batches] == [5, 5, 2]
    for (inputs, targets), index in zip(batches, order):
        assert set(inputs) == {"video", "audio"}
        assert inputs["video"].shape == (len(index), 3, 4, 32, 32) and inputs["video"].dtype == torch.float32
        assert inputs["audio"].shape == (len(index), 1, 16, 20) and inputs["audio"].dtype == torch.float32
        assert targets.dtype == torch.int64 and targets.tolist() == dataset.labels[index.numpy()].tolist()
        assert torch.isfinite(inputs["video"]).all() and torch.isfinite(inputs["audio"]).all()
    video = torch.cat([x["video"] for x, _ in batches])
    # Kinetics-normalised: roughly zero-mean, unit-scale
    assert -1.0 < video.mean().item() < 1.0 and 0.3 < video.std().item() < 2.0


def test_eval_is_deterministic_and_the_same_with_worker_processes(dataset):
    data = dataset.source([0, 5, 9], train=True)
    a = one_batch(data, [0, 1, 2])
    b = one_batch(data, [0, 1, 2])
    workers = dataclasses.replace(data, spec=dataclasses.replace(SPEC, num_workers=2))
    (c,) = [one_batch(workers, [0, 1, 2])]
    for m in ("video", "audio"):
        assert torch.equal(a[0][m], b[0][m])
        # other worker processes run torch with one thread: the STFT may round differently
        assert torch.allclose(a[0][m], c[0][m], atol=1e-4)
    # an eval source never augments, even when asked to
    eval_source = dataset.source([0, 5, 9], train=False)
    assert torch.equal(one_batch(eval_source, [0, 1, 2], train=True, epoch=3)[0]["video"], a[0]["video"])


def test_worker_processes_persist_from_pass_to_pass_and_end_with_their_source(dataset):
    def children() -> set[int]:
        return {p.pid for p in multiprocessing.active_children()}

    before = children()
    spec = dataclasses.replace(SPEC, num_workers=2, prefetch_factor=3)
    data = dataclasses.replace(dataset.source(np.arange(6), train=True, seed=3), spec=spec)
    order = [torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])]
    passes = [list(data.batches(order, train=True, epoch=0))]
    workers = children() - before
    passes.append(list(data.batches(order, train=True, epoch=1)))
    assert len(workers) == 2 and children() - before == workers  # the same two processes served both
    in_process = dataset.source(np.arange(6), train=True, seed=3)  # num_workers 0
    for epoch, batches in enumerate(passes):  # each pass is its own epoch's
        for (got, _), (want, _) in zip(batches, in_process.batches(order, train=True, epoch=epoch), strict=True):
            for m in want:
                assert torch.allclose(got[m], want[m], atol=1e-4)
    # a pass opened while another is open gets workers of its own; neither is cut short
    outer = data.batches(order, train=False, epoch=0)
    first = next(outer)
    (inner,) = data.batches(order[:1], train=False, epoch=0)
    rest = list(outer)
    assert torch.equal(inner[0]["video"], first[0]["video"]) and len(rest) == 1
    del data, outer
    assert children() - before == set()  # dropped with the source, not left to the garbage collector


def test_train_augmentation_changes_with_epoch_and_is_reproducible(dataset):
    data = dataset.source(np.arange(12), train=True, seed=7)
    e0 = one_batch(data, [0, 1, 2, 3], train=True, epoch=0)[0]
    again = one_batch(data, [0, 1, 2, 3], train=True, epoch=0)[0]
    e1 = one_batch(data, [0, 1, 2, 3], train=True, epoch=1)[0]
    assert torch.equal(e0["video"], again["video"]) and torch.equal(e0["audio"], again["audio"])
    assert not torch.equal(e0["video"], e1["video"])
    # seeded per sample, not per batch or worker: sample 2 alone, in 2 worker processes
    workers = dataclasses.replace(data, spec=dataclasses.replace(SPEC, num_workers=2))
    alone = list(workers.batches([torch.tensor([2]), torch.tensor([0, 1])], train=True, epoch=0))
    assert torch.equal(alone[0][0]["video"][0], e0["video"][2])
    assert torch.equal(alone[1][0]["video"], e0["video"][:2])
    # the random clip start covers the allowed range [first, stop - span]
    starts = {data.plan(0, train=True, epoch=e)[0].start for e in range(40)}
    assert min(starts) >= 0 and max(starts) <= N_FRAMES - SPAN and len(starts) > 4
    assert {data.plan(0, train=True, epoch=e)[0].flip for e in range(40)} == {True, False}


def test_k_clips_per_sample_are_consecutive_and_uniformly_spaced(dataset):
    data = dataset.source(np.arange(12), train=False, clips_per_sample=3)
    inputs, targets = one_batch(data, [2, 5])
    assert inputs["video"].shape == (6, 3, 4, 32, 32) and inputs["audio"].shape == (6, 1, 16, 20)
    assert targets.tolist() == [dataset.labels[2], dataset.labels[5]]
    alone, _ = one_batch(data, [5])
    assert torch.equal(inputs["video"][3:], alone["video"]) and torch.equal(inputs["audio"][3:], alone["audio"])
    plans = data.plan(2, train=False, epoch=0)
    assert [p.start for p in plans] == [0, 5, 10]  # first to last possible start
    assert plans[0].frames == (0, 2, 4, 6)
    assert not torch.equal(inputs["video"][0], inputs["video"][2])
    # K = 1 at eval: the centre clip
    assert dataset.source([2], train=False).plan(0, train=False, epoch=0)[0].start == (N_FRAMES - SPAN) // 2


def test_audio_spectrogram_has_the_class_tone_in_its_mel_band(dataset):
    data = dataset.source([0, 4, 8], train=False)  # one sample of each class
    audio = one_batch(data, [0, 1, 2])[0]["audio"]
    bands = audio.mean(dim=-1)[:, 0].argmax(dim=1).tolist()
    fb = melscale_fbanks(SR // 2 + 1, 0.0, SR / 2, SPEC.n_mels, SR)  # 1-Hz resolution: (freqs, n_mels)
    expected = [int(fb[round(tone_hz(c, 3, SR))].argmax()) for c in range(3)]
    assert all(abs(b - e) <= 1 for b, e in zip(bands, expected)), (bands, expected)
    assert bands[0] < bands[1] < bands[2]
    # and the band stands out over the rest of the spectrum
    profile = audio.mean(dim=-1)[0, 0]
    assert profile[bands[0]] > profile.median() + 2.0


def test_multilabel_manifest_gives_multi_hot_labels(tmp_path):
    manifest = write_test_media(tmp_path / "ml", classes=3, per_class=2, seconds=1.0, fps=FPS, size=32,
                                multilabel=True, seed=1)
    ds = load_media_dataset(manifest, dataclasses.replace(SPEC, resize=32), ["audio"])
    assert ds.task == "multilabel" and ds.labels.dtype == np.float32 and ds.labels.shape == (6, 3)
    assert set(np.unique(ds.labels).tolist()) <= {0.0, 1.0} and (ds.labels.sum(axis=1) >= 1).all()
    with manifest.open() as f:
        rows = list(csv.DictReader(f))
    for row, y in zip(rows, ds.labels):
        assert {f"class{c}" for c in np.flatnonzero(y)} == set(row["labels"].split(";"))
    _, targets = one_batch(ds.source(np.arange(6), train=False), list(range(6)))
    assert targets.dtype == torch.float32 and torch.equal(targets, torch.as_tensor(ds.labels))


def test_runner_interfaces_splits_and_modality_subsets(dataset):
    splits = make_splits(dataset, heldout_fraction=0.25, seed=0, val_fraction=0.0, test_fraction=0.25)
    assert sum(splits.sizes()[k] for k in ("train", "heldout", "val", "test")) == 12
    audio_only = dataclasses.replace(dataset, modalities={"audio": dataset.modalities["audio"]})
    inputs, _ = one_batch(audio_only.source(splits.heldout, train=False), list(range(len(splits.heldout))))
    assert set(inputs) == {"audio"}
    with pytest.raises(MediaError, match="video"):
        audio_only.source([0], ["video"], train=False)
    # the dataset and its sources travel to Ray workers by pickle
    again = pickle.loads(pickle.dumps(dataset))
    assert again.clips == dataset.clips and np.array_equal(again.labels, dataset.labels)
    source = pickle.loads(pickle.dumps(dataset.source([1, 2], train=False)))
    assert torch.equal(one_batch(source, [0, 1])[0]["video"], one_batch(dataset.source([1, 2], train=False), [0, 1])[0]["video"])


def test_segments_and_split_column(tmp_path, media):
    rows = [{"path": str(media.parent / "videos/class0_000.mp4"), "label": "class0", "start": "0.5", "end": "1.4",
             "split": "train"},
            {"path": os.path.relpath(media.parent / "videos/class1_000.mp4", tmp_path), "label": "class1",
             "start": "", "end": "", "split": "test"}]
    manifest = write_manifest(tmp_path / "seg.csv", rows)
    ds = load_media_dataset(manifest, SPEC, ["video"])
    assert ds.split.tolist() == ["train", "test"]
    assert (ds.clips[0].first, ds.clips[0].stop) == (6, 16)  # ceil(0.5*12), floor(1.4*12)
    data = ds.source([0], train=True)
    assert {data.plan(0, train=True, epoch=e)[0].start for e in range(30)} <= set(range(6, 16 - SPAN + 1))
    rows[0]["end"] = "1.0"  # frames 6..11: 6 < 8
    write_manifest(tmp_path / "seg.csv", rows)
    with pytest.raises(MediaError, match=r"too short: 6 frames within \[0.5, 1\] s .* needs 8"):
        load_media_dataset(manifest, SPEC, ["video"])


# ------------------------------------------------------------------ bad media


@pytest.fixture(scope="module")
def bad_media(tmp_path_factory, media):
    """Two good files and one of each kind of bad file."""
    root = tmp_path_factory.mktemp("bad")
    good = [root / "good0.mp4", root / "good1.mp4"]
    shutil.copy(media.parent / "videos/class0_000.mp4", good[0])
    shutil.copy(media.parent / "videos/class1_000.mp4", good[1])
    bad = {}
    bad["garbage"] = root / "garbage.mp4"
    bad["garbage"].write_bytes(np.random.default_rng(0).bytes(20_000))
    data = good[0].read_bytes()
    bad["cut"] = root / "cut.mp4"  # index (moov) at the end: cut in half, FFmpeg cannot open it
    bad["cut"].write_bytes(data[: len(data) // 2])
    fast = write_clip(root / "fast.mp4", noise_frames(24), FPS, tone(2.0), SR, faststart=True)
    data = fast.read_bytes()
    bad["cut_faststart"] = root / "cut_faststart.mp4"  # index first: opens, then decoding runs dry
    bad["cut_faststart"].write_bytes(data[: len(data) // 2])
    fast.unlink()
    bad["no_audio"] = write_clip(root / "no_audio.mp4", noise_frames(18), FPS, None)
    bad["short"] = write_clip(root / "short.mp4", noise_frames(5), FPS, tone(5 / FPS), SR)
    bad["missing"] = root / "missing.mp4"
    return root, good, bad


REASONS = {
    "garbage": "cannot be read by FFmpeg",
    "cut": "cannot be read by FFmpeg",
    "cut_faststart": r"truncated or corrupt: only \d+ of the 24 frames",
    "no_audio": "has no audio stream",
    "short": r"too short: 5 frames at 12 fps, but one clip needs 8",
    "missing": "does not exist",
}


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_bad_file_raises_naming_it(bad_media, kind):
    root, good, bad = bad_media
    manifest = write_manifest(root / f"{kind}.csv", [{"path": p.name, "label": "a"} for p in [*good, bad[kind]]])
    with pytest.raises(MediaError) as info:
        load_media_dataset(manifest, SPEC)
    message = str(info.value)
    assert message.startswith(str(bad[kind])), message
    assert "row 3" in message and "on_bad_sample: skip" in message
    assert "Traceback" not in message
    assert re.search(REASONS[kind], message), message


def test_bad_files_are_skipped_and_recorded(bad_media):
    root, good, bad = bad_media
    kinds = sorted(REASONS)
    manifest = write_manifest(root / "all.csv", [{"path": p.name, "label": n}
                                                 for p, n in [(good[0], "a"), *((bad[k], "b") for k in kinds),
                                                              (good[1], "c")]])
    ds = load_media_dataset(manifest, dataclasses.replace(SPEC, on_bad_sample="skip"))
    assert ds.num_samples == 2 and [Path(c.path) for c in ds.clips] == good
    assert ds.labels.tolist() == [0, 2] and ds.classes == ["a", "b", "c"]
    assert set(ds.skipped) == {str(bad[k]) for k in kinds}
    for k in kinds:
        assert re.search(REASONS[k], ds.skipped[str(bad[k])]), (k, ds.skipped[str(bad[k])])
    # without the audio modality a file without an audio stream is fine
    video_only = load_media_dataset(manifest, dataclasses.replace(SPEC, on_bad_sample="skip"), ["video"])
    assert str(bad["no_audio"]) not in video_only.skipped and video_only.num_samples == 3


def test_container_without_a_frame_count_trusts_the_decoder(tmp_path):
    # Matroska stores no frame count: it is estimated from the duration (here one too many)
    write_clip(tmp_path / "a.mkv", noise_frames(18), FPS, tone(1.5), SR)
    data = (tmp_path / "a.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) * 6 // 10])
    manifest = write_manifest(tmp_path / "m.csv", [{"path": "a.mkv", "label": "x"}, {"path": "cut.mkv", "label": "x"}])
    ds = load_media_dataset(manifest, dataclasses.replace(SPEC, on_bad_sample="skip"))
    assert not ds.clips[0].info.declared and ds.clips[0].stop == 18 == ds.clips[0].info.frames
    assert ds.clips[1].stop < 18 and ds.num_samples == 2  # what decodes is long enough for a clip
    inputs, _ = one_batch(ds.source([0, 1], train=False, clips_per_sample=2), [0, 1])
    assert inputs["video"].shape == (4, 3, 4, 32, 32)
    longer = load_media_dataset(manifest, dataclasses.replace(SPEC, frames=7, on_bad_sample="skip"))
    assert list(longer.skipped) == [str(tmp_path / "cut.mkv")] and "too short or truncated" in longer.skipped[str(tmp_path / "cut.mkv")]


@pytest.mark.parametrize("workers", [0, 1])
def test_decode_error_in_a_worker_surfaces_as_media_error(tmp_path, media, workers):
    paths = []
    for name in ("class0_000", "class1_000", "class2_000"):
        shutil.copy(media.parent / f"videos/{name}.mp4", tmp_path / f"{name}.mp4")
        paths.append(tmp_path / f"{name}.mp4")
    manifest = write_manifest(tmp_path / "m.csv", [{"path": p.name, "label": "x"} for p in paths])
    ds = load_media_dataset(manifest, dataclasses.replace(SPEC, num_workers=workers))
    paths[1].write_bytes(np.random.default_rng(1).bytes(5000))  # corrupted after the check
    with pytest.raises(MediaError) as info:
        list(ds.source([0, 1, 2], train=False).batches([torch.tensor([0]), torch.tensor([1, 2])], train=False, epoch=0))
    assert str(info.value).startswith(str(paths[1])) and "cannot be decoded" in str(info.value)


# ------------------------------------------------------------------ manifest errors


@pytest.mark.parametrize("text, meta, row, field, what", [
    ("path,label\na.mp4,x\nb.mp4,\n", None, 2, "label", "empty"),
    ("path,label,start\na.mp4,x,abc\n", None, 1, "start", "not a number"),
    ("path,label,start,end\na.mp4,x,0,1\nb.mp4,x,2,1\n", None, 2, "end", "not after start"),
    ("path,label,split\na.mp4,x,train\nb.mp4,x,dev\n", None, 2, "split", "not one of"),
    ("path,label\na.mp4,x\nb.mp4,z\n", "classes: [x, y]\n", 2, "label", "not among the classes"),
    ("path,labels\na.mp4,x;y\n", "task: multiclass\n", 1, "labels", "multiclass"),
    ("path,label\na.mp4,x;y\n", None, 1, "label", "'labels'"),
    ("path,label\n,x\n", None, 1, "path", "empty"),
])
def test_manifest_errors_name_row_and_field(tmp_path, text, meta, row, field, what):
    (tmp_path / "manifest.csv").write_text(text)
    if meta:
        (tmp_path / "meta.yaml").write_text(meta)
    with pytest.raises(MediaError) as info:
        load_media_dataset(tmp_path, SPEC)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "manifest.csv")), message
    assert f"row {row} (line {row + 1}), field {field!r}" in message and what in message, message


@pytest.mark.parametrize("text, what", [
    ("file,label\na.mp4,x\n", "no 'path' column"),
    ("path,label,labels\na.mp4,x,x\n", "both 'label' and 'labels'"),
    ("path\na.mp4\n", "neither"),
    ("path,label\n", "no rows"),
])
def test_manifest_structure_errors(tmp_path, text, what):
    (tmp_path / "manifest.csv").write_text(text)
    with pytest.raises(MediaError, match=what):
        read_manifest(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MediaError, match="no manifest.csv in this directory"):
        read_manifest(tmp_path / "empty")
    with pytest.raises(MediaError, match="manifest does not exist"):
        read_manifest(tmp_path / "nowhere.csv")


def test_classes_default_to_sorted_names_and_flow_needs_its_directory(tmp_path, media):
    video = media.parent / "videos/class0_000.mp4"
    manifest = write_manifest(tmp_path / "m.csv", [{"path": str(video), "labels": "zeta;alpha"},
                                                   {"path": str(video), "labels": "mid"}])
    m = read_manifest(manifest)
    assert m.classes == ["alpha", "mid", "zeta"] and m.task == "multilabel"
    assert [r.labels for r in m.rows] == [(0, 2), (1,)]
    with pytest.raises(MediaError, match="flow_dir"):
        load_media_dataset(manifest, SPEC, ["video", "flow"])


def test_plan_is_a_pure_function_of_seed_epoch_and_index(dataset):
    clip = dataset.clips[3]
    a = plan_clips(clip, SPEC, 1, True, seed=1, epoch=2)
    assert a == plan_clips(clip, SPEC, 1, True, seed=1, epoch=2)
    assert any(plan_clips(clip, SPEC, 1, True, seed=1, epoch=e) != a for e in range(3, 6))
    p = a[0]
    assert math.isclose(p.t_to - p.t_from, SPAN / FPS)
    assert 0 <= p.top <= 40 - 32 and 0 <= p.left <= round(64 * 40 / 48) - 32


@pytest.mark.parametrize("gop", [12, 1000])
def test_frames_and_audio_window_are_the_clip_s_own(tmp_path, gop):
    """Frame i is the i-th frame, whether a seek finds a keyframe near it (a keyframe every
    second) or only the first one (a single keyframe), and the audio is the clip's span."""
    n = 60  # 5 s at 12 fps
    levels = np.arange(n) * 4
    frames = np.broadcast_to(levels[:, None, None, None], (n, 48, 64, 3)).astype(np.uint8)
    t = np.arange(5 * SR) / SR
    audio = np.where(t >= 2.5, 0.5 * np.sin(2 * np.pi * 2000 * t), 0.0).astype(np.float32)  # tone from 2.5 s
    write_clip(tmp_path / "ramp.mp4", frames, FPS, audio, SR, gop=gop)
    manifest = write_manifest(tmp_path / "m.csv", [{"path": "ramp.mp4", "label": "x"}])
    ds = load_media_dataset(manifest, SPEC)
    data = ds.source([0], train=False, clips_per_sample=3)
    inputs, _ = one_batch(data, [0])
    plans = data.plan(0, train=False, epoch=0)
    assert [p.start for p in plans] == [0, 26, 52]

    def levels_of(video):  # the red channel, un-normalised, per frame, in 8-bit levels
        return (video[0].mean(dim=(1, 2)) * KINETICS_STD[0] + KINETICS_MEAN[0]).numpy() * 255

    for k, p in enumerate(plans):
        assert np.allclose(levels_of(inputs["video"][k]), levels[list(p.frames)], atol=3), p.frames
    fb = melscale_fbanks(SR // 2 + 1, 0.0, SR / 2, SPEC.n_mels, SR)
    band = int(fb[2000].argmax())
    energy = inputs["audio"][:, 0, band].mean(dim=-1)
    # clip 0: [0, 0.67) s silent; clip 1: [2.17, 2.83) s, the tone from its middle; clip 2: [4.33, 5) s tone
    assert energy[0] < energy[1] - 3 and energy[1] < energy[2]
    half = inputs["audio"][1, 0, band]
    assert half[:6].mean() < half[-6:].mean() - 3
    # one centre clip: a seek to frame 26's keyframe (24, or 0), then decoding up to it
    centre = ds.source([0], train=False)
    (p,) = centre.plan(0, train=False, epoch=0)
    assert p.start == 26
    assert np.allclose(levels_of(one_batch(centre, [0])[0]["video"][0]), levels[list(p.frames)], atol=3)
