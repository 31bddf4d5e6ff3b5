"""Clip throughput of the media data layer against a bare PyAV decode loop.

``MediaData`` does more than decode: it seeks, converts and resizes frames (swscale), crops,
normalises, computes log-Mel spectrograms, collates, and moves batches from its worker
processes to the trainer. This script measures what that costs, in one run, on the same
files and the same frames: a bare loop that opens each file with PyAV, seeks and decodes
exactly the frames of the sample's centre clip to RGB arrays (nothing else, one process),
against ``MediaData.batches`` in several settings. Each pass is one ``batches`` call over
every file, ``--repeat`` times over (an epoch of a larger data set), after one untimed
pass that starts the source's worker processes, which then persist from pass to pass as
they do from epoch to epoch in a run. It writes its own test media (H.264 +
AAC, ``gblend_ray.testmedia``) into a temporary directory. Run by hand:

    python bench/media_throughput.py [--files 24] [--seconds 4] [--fps 24] [--height 128] [--repeat 4] [--passes 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import av
import numpy as np
import torch

from gblend_ray.core.spec import MediaSpec
from gblend_ray.data.media.dataset import load_media_dataset
from gblend_ray.data.media.decode import decode_frames, video_info
from gblend_ray.data.media.testmedia import write_test_media
from gblend_ray.training.engine import sequential_order


def bare_decode(paths: list[str], frames: list[list[int]]) -> None:
    """Seek and decode the given frames of every file to RGB arrays, in this process."""
    for path, wanted in zip(paths, frames):
        with av.open(path) as container:
            info = video_info(container)
            found, _ = decode_frames(container, info, wanted, lambda f: f.to_ndarray(format="rgb24"))
            assert len(found) == len(set(wanted)), path


def timed(fn, passes: int, clips: int) -> float:
    """Clips per second over ``passes`` runs of ``fn`` (after one warm-up run)."""
    fn()
    began = time.perf_counter()
    for _ in range(passes):
        fn()
    return clips * passes / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--height", type=int, default=128, help="frame height (width is 4/3 of it)")
    parser.add_argument("--repeat", type=int, default=4, help="times a pass walks the files")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    spec = MediaSpec()  # the defaults: 8 frames, stride 2, resize 128, crop 112, 40 x 100 log-Mel
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        manifest = write_test_media(tmp, classes=3, per_class=max(args.files // 3, 1), seconds=args.seconds,
                                    fps=args.fps, size=args.height)
        made = time.perf_counter() - began
        began = time.perf_counter()
        ds = load_media_dataset(manifest, spec)
        checked = time.perf_counter() - began
        n = ds.num_samples
        order = [b % n for b in sequential_order(n * args.repeat, args.batch_size)]
        clips = n * args.repeat
        centre = ds.source(np.arange(n), train=False)
        paths = [c.path for c in ds.clips]
        frames = [list(centre.plan(i, train=False, epoch=0)[0].frames) for i in range(n)]
        info = ds.clips[0].info
        print(f"{n} files, {args.seconds:g} s at {info.fps:g} fps, {info.width}x{info.height} H.264 + AAC "
              f"(written in {made:.1f} s, checked by load_media_dataset in {checked:.2f} s); "
              f"clips of {spec.frames} frames (stride {spec.stride}) -> {spec.size}x{spec.size}, audio "
              f"{spec.n_mels}x{spec.mel_frames} log-Mel; {clips} clips a pass in batches of {args.batch_size}; "
              f"{os.cpu_count()} CPUs; "
              f"torch {torch.__version__}, PyAV {av.__version__}")
        bare = timed(lambda: bare_decode(paths * args.repeat, frames * args.repeat), args.passes, clips)
        rows = [("bare PyAV: seek + decode the same frames to RGB, 1 process", None, bare)]

        def media(modalities, workers, train=False, k=1):
            data = ds.source(np.arange(n), modalities, train=train, clips_per_sample=k)
            data = dataclasses.replace(data, spec=dataclasses.replace(spec, num_workers=workers))
            epoch = iter(range(10_000))
            return lambda: [None for _ in data.batches(order, train=train, epoch=next(epoch))]

        for label, modalities, workers, train in [
            ("MediaData video, eval, num_workers=0", ["video"], 0, False),
            ("MediaData video, eval, num_workers=2", ["video"], 2, False),
            ("MediaData video+audio, eval, num_workers=2", ["video", "audio"], 2, False),
            ("MediaData video+audio, train (random clip/crop/flip), num_workers=2", ["video", "audio"], 2, True),
        ]:
            rows.append((label, workers, timed(media(modalities, workers, train), args.passes, clips)))
    width = max(len(r[0]) for r in rows)
    print(f"{'pipeline':<{width}}  {'clips/s':>8}  {'vs bare':>7}")
    for label, _, rate in rows:
        print(f"{label:<{width}}  {rate:8.1f}  {rate / bare:6.2f}x")


if __name__ == "__main__":
    main()
