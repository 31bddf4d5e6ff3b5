"""Farnebäck flow extraction, its storage, and the flow modality of media sources."""

import csv
import dataclasses
import json
import shutil
import zipfile

import numpy as np
import pytest
import torch

from gblend_ray.core.spec import MediaSpec
from gblend_ray.data.media.dataset import load_media_dataset
from gblend_ray.data.media.flow import (
    FORMAT,
    dequantize,
    extract_flow,
    load_flow_index,
    quantize,
    read_flow,
)
from gblend_ray.data.media.manifest import MediaError
from gblend_ray.data.media.testmedia import write_test_media

FPS, SECONDS = 12, 1.5
N_FRAMES = 18
BOUND = 20.0


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    # class 0's grating moves towards +x; classes 1 and 2 at 120° and 240° (negative x component)
    return write_test_media(tmp_path_factory.mktemp("media"), classes=3, per_class=2, seconds=SECONDS, fps=FPS,
                            size=48)


@pytest.fixture(scope="module")
def flow_dir(media, tmp_path_factory):
    out = tmp_path_factory.mktemp("flow")
    extract_flow(media, out, resize=40, bound=BOUND, workers=2)
    return out


def spec_for(flow_dir, **kw):
    kw = {"num_workers": 0, **kw}
    return MediaSpec(frames=4, stride=2, resize=40, size=32, n_mels=16, mel_frames=20, flow_dir=str(flow_dir), **kw)


def test_index_and_files_follow_the_documented_format(media, flow_dir):
    index = json.loads((flow_dir / "flow_index.json").read_text())
    assert index["format"] == FORMAT and index["bound"] == BOUND and index["resize"] == 40
    assert index["skipped"] == {}
    assert sorted(index["videos"]) == [f"videos/class{c}_{j:03d}.mp4" for c in range(3) for j in range(2)]
    entry = index["videos"]["videos/class0_000.mp4"]
    assert (entry["fps"], entry["frames"], entry["height"], entry["width"]) == (FPS, N_FRAMES, 40, 53)
    with zipfile.ZipFile(flow_dir / entry["file"]) as z:
        names = sorted(z.namelist())
        assert names == [f"{i:06d}.npy" for i in range(N_FRAMES)]
        assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in z.infolist())
    with np.load(flow_dir / entry["file"]) as z:
        assert z["000003"].dtype == np.uint8 and z["000003"].shape == (2, 40, 53)
        assert np.array_equal(z[f"{N_FRAMES - 1:06d}"], z[f"{N_FRAMES - 2:06d}"])  # last repeats the one before
    loaded = load_flow_index(flow_dir)
    assert loaded.entry(media.parent / "videos/class0_000.mp4", media.parent).frames == N_FRAMES
    assert loaded.entry(media.parent / "videos/other.mp4", media.parent) is None


def test_quantization_round_trip():
    f = np.array([-25.0, -20.0, -3.3, 0.0, 0.07, 12.5, 20.0, 31.0], np.float32)
    q = quantize(f, BOUND)
    assert q.dtype == np.uint8 and q[0] == 0 and q[-1] == 255
    back = dequantize(q, BOUND)
    assert np.all(np.abs(back - np.clip(f, -BOUND, BOUND)) <= BOUND / 255 + 1e-6)


def test_flow_of_moving_gratings_has_the_right_sign(media, flow_dir):
    index = load_flow_index(flow_dir)
    mean_x = {}
    for c in range(3):
        entry = index.entry(media.parent / f"videos/class{c}_000.mp4", media.parent)
        f = read_flow(flow_dir / entry.file, list(range(N_FRAMES - 1)), index.bound)
        assert f.shape == (2, N_FRAMES - 1, 40, 53) and f.dtype == np.float32
        mean_x[c] = float(f[0].mean())
    # the grating moves 1.5 px/frame at 48 px, 1.25 px/frame at 40 px
    assert mean_x[0] > 0.5, mean_x
    assert mean_x[1] < -0.2 and mean_x[2] < -0.2, mean_x


def test_flow_modality_matches_stored_flow_and_flip_negates_x(media, flow_dir):
    ds = load_media_dataset(media, spec_for(flow_dir))
    assert ds.shapes()["flow"] == (2, 4, 32, 32)
    data = ds.source([0], ["flow"], train=True, seed=3)
    plans = {e: data.plan(0, train=True, epoch=e)[0] for e in range(12)}
    flipped = next(e for e, p in plans.items() if p.flip)
    straight = next(e for e, p in plans.items() if not p.flip)
    for epoch in (flipped, straight):
        (inputs, _), = data.batches([torch.tensor([0])], train=True, epoch=epoch)
        x = inputs["flow"][0]
        assert x.shape == (2, 4, 32, 32) and x.dtype == torch.float32
        p = plans[epoch]
        stored = read_flow(ds.clips[0].flow, list(p.frames), BOUND)[:, :, p.top:p.top + 32, p.left:p.left + 32] / BOUND
        expected = torch.from_numpy(np.ascontiguousarray(stored))
        if p.flip:
            expected = expected.flip(-1)
            expected[0] = -expected[0]
        assert torch.allclose(x, expected, atol=1e-6)
        # class 0 moves right; mirrored, it moves left
        assert (x[0].mean() < -0.02) if p.flip else (x[0].mean() > 0.02)
    # eval: the centre crop, no flip; with 2 worker processes too
    workers = dataclasses.replace(ds.source(np.arange(6), ["video", "flow"], train=False),
                                  spec=spec_for(flow_dir, num_workers=2))
    (inputs, targets), = workers.batches([torch.arange(6)], train=False, epoch=0)
    assert inputs["flow"].shape == (6, 2, 4, 32, 32) and inputs["video"].shape == (6, 3, 4, 32, 32)
    means = inputs["flow"][:, 0].mean(dim=(1, 2, 3))
    assert (means[targets == 0] > 0).all() and (means[targets != 0] < 0).all()
    assert inputs["flow"].abs().max() <= 1.0


def test_flow_is_resized_with_its_vectors(flow_dir):
    index = load_flow_index(flow_dir)
    file = flow_dir / next(iter(index.videos.values())).file
    full = read_flow(file, [2, 3], BOUND)
    half = read_flow(file, [2, 3], BOUND, size=(20, 27))
    assert half.shape == (2, 2, 20, 27)
    assert np.isclose(half[0].mean(), full[0].mean() * 27 / 53, rtol=0.1, atol=0.02)
    assert np.isclose(half[1].mean(), full[1].mean() * 20 / 40, rtol=0.1, atol=0.02)


def test_missing_or_stale_flow_is_a_bad_sample(media, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(media.parent, root)
    out = tmp_path / "flow"
    extract_flow(root, out, resize=40, bound=BOUND)
    with (root / "manifest.csv").open("a", newline="") as f:  # a video added after extraction
        shutil.copy(root / "videos/class0_000.mp4", root / "videos/late.mp4")
        csv.writer(f).writerow(["videos/late.mp4", "class0"])
    with pytest.raises(MediaError, match=r"late\.mp4: has no optical flow in .*extract-flow"):
        load_media_dataset(root, spec_for(out))
    ds = load_media_dataset(root, spec_for(out, on_bad_sample="skip"))
    assert list(ds.skipped) == [str(root / "videos/late.mp4")] and ds.num_samples == 6
    with pytest.raises(MediaError, match="flow_index.json: no flow index"):
        load_media_dataset(root, spec_for(tmp_path / "nothing"))


def test_extract_flow_bad_files(media, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(media.parent, root)
    (root / "videos/broken.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    with (root / "manifest.csv").open("a", newline="") as f:
        csv.writer(f).writerow(["videos/broken.mp4", "class1"])
    with pytest.raises(MediaError) as info:
        extract_flow(root, tmp_path / "f1", resize=40)
    assert str(info.value).startswith(str(root / "videos/broken.mp4")) and "cannot be decoded" in str(info.value)
    index = load_flow_index(extract_flow(root, tmp_path / "f2", resize=40, on_bad_sample="skip").parent)
    assert list(index.skipped) == [str(root / "videos/broken.mp4")] and len(index.videos) == 6
