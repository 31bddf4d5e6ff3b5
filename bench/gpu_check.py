"""What the GPU path does on this machine, in two tables: training throughput of the video
and audio backbones at each precision, and a small media run's cost of online G-Blend over
naive fusion with probe trials on GPU shares. Run by hand (under 5 minutes on one GPU):

    python bench/gpu_check.py            # on a GPU
    python bench/gpu_check.py --quick    # fewer steps; without a GPU: the CPU parts only

(1) Train clips/s through the engine (``engine.train_epochs``, the loop every run and probe
uses: forward, loss, backward, SGD step) of torchvision's ``r2plus1d_18`` on clips of
8 x 112 x 112 RGB frames and of the project's audio encoder (``resnet18`` on 1 x 40 x 100
log-Mel, ``encoders.py``), randomly initialised (nothing is downloaded), at fp32 and bf16
(and r2plus1d_18 at bf16 with ``train.channels_last``), each after warm-up steps, timed
between ``torch.cuda.synchronize`` calls, with the peak of ``torch.cuda.max_memory_allocated``.
(2) On a GPU: a tiny generated media set (``testmedia.write_test_media``, as the tests make
theirs), trained on a local Ray cluster once with naive fusion and once with online G-Blend
whose three probe trials each hold ``probes.resources: {GPU: 0.25}`` beside a trainer worker
on a quarter of the GPU, at bf16; the wall-clock ratio of the two runs.

Without a GPU it runs (1) on the CPU with a tiny batch and step count and says that the
GPU parts were skipped.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("WANDB_MODE", "offline")

import torch

from gblend_ray.core.spec import ModelSpec, OptimSpec, RunSpec
from gblend_ray.data.sources import TensorData
from gblend_ray.training.compute import Compute, to_channels_last
from gblend_ray.training.engine import make_optimizer, train_epochs
from gblend_ray.training.model import build_model

VIDEO_CLIP = (3, 8, 112, 112)
"""(C, T, H, W): 8 RGB frames at 112 x 112, the video ResNets' usual input."""
AUDIO_CLIP = (1, 40, 100)
"""(C, n_mels, frames): the paper's 40 x 100 log-Mel."""


def device_lines(device: torch.device) -> list[str]:
    lines = [(f"torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'}), "
              f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads")]
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        lines.append(f"device: {torch.cuda.get_device_name(device)} (compute capability {p.major}.{p.minor}, "
                     f"{p.total_memory / 2**30:.1f} GiB; {torch.cuda.device_count()} GPU(s); cuDNN "
                     f"{torch.backends.cudnn.version()}; bf16 supported: {torch.cuda.is_bf16_supported()})")
    else:
        lines.append(f"device: CPU ({torch.backends.cpu.get_cpu_capability()}); no CUDA GPU is visible "
                     f"(torch.cuda.is_available() is False)")
    return lines


def clips_per_second(encoder: str, shape: tuple[int, ...], device: torch.device, compute: Compute, *,
                     batch: int, warmup: int, steps: int) -> tuple[float, float | None, bool]:
    """Train clips/s of ``encoder`` with a linear head, the peak GPU memory (MiB; None on a
    CPU), and whether every loss stayed finite. The warm-up and the timed steps are one
    engine epoch each over random clips, so a non-finite loss, which the engine raises at
    the end of an epoch, still leaves every step timed."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(encoder=encoder), {"x": shape}, num_classes=10).to(device)
    if compute.channels_last:
        to_channels_last(model)
    n = batch * max(warmup, steps)
    clips = torch.randn(n, *shape, device=device)
    labels = torch.randint(0, 10, (n,), device=device)
    optimizer = make_optimizer(model.parameters(), OptimSpec(lr=0.01))

    def epoch(k: int, start: int) -> bool:
        try:
            train_epochs(model, TensorData({"x": clips[:k * batch]}, labels[:k * batch]), optimizer, {"x": 1.0}, 1,
                         start_epoch=start, batch_size=batch, compute=compute)
        except FloatingPointError:
            return False
        return True

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    finite = epoch(warmup, 0) if warmup else True
    if cuda:
        torch.cuda.synchronize(device)
    began = time.perf_counter()
    finite = epoch(steps, 1) and finite
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - began
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    return batch * steps / seconds, peak, finite


def media_spec(path: str, method: str) -> RunSpec:
    spec = RunSpec(method=method, seed=0)
    spec.data.path = path
    spec.data.heldout_fraction = 0.2
    m = spec.data.media
    m.frames, m.stride, m.resize, m.size, m.eval_clips, m.num_workers = 8, 1, 64, 56, 2, 1
    spec.model.encoders = {"video": "r2plus1d_18", "audio": "resnet18"}
    spec.optim.lr = 0.01
    spec.train.epochs, spec.train.batch_size, spec.train.precision = 4, 8, "bf16"
    spec.blend.warmup_epochs, spec.blend.super_epoch = 2, 1
    spec.trainer.use_gpu = True
    spec.trainer.resources_per_worker = {"CPU": 1.0, "GPU": 0.25}
    spec.probes.resources = {"CPU": 1.0, "GPU": 0.25}  # three probe trials + the trainer: one GPU
    spec.tracking.backend = "none"
    return spec


def media_run(quick: bool) -> list[tuple[str, float, int]]:
    """(method, wall s, rounds) of a naive and an online G-Blend run on a local Ray cluster."""
    from gblend_ray.data.media.testmedia import write_test_media
    from gblend_ray.distributed.cluster import connect
    from gblend_ray.distributed.ray_runner import cpus_for, run_on_ray

    rows = []
    with tempfile.TemporaryDirectory(prefix="gblend-gpu-check-") as tmp:
        manifest = write_test_media(os.path.join(tmp, "media"), classes=3, per_class=4 if quick else 8,
                                    seconds=2.0, fps=12, size=64)
        connect(cpus_wanted=cpus_for(media_spec(str(manifest), "gblend:online"), 3))  # Ray starts once, untimed
        for method in ("naive", "gblend:online"):
            began = time.perf_counter()
            res = run_on_ray(media_spec(str(manifest), method), os.path.join(tmp, method.replace(":", "-")))
            rows.append((method, time.perf_counter() - began, len(res["trajectory"])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (and a smaller media set)")
    parser.add_argument("--batch", type=int, default=None, help="clips a step (default: 16 on a GPU, 2 on a CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=None, help="timed steps")
    parser.add_argument("--skip-media", action="store_true", help="leave out the media run on Ray")
    args = parser.parse_args()
    began = time.perf_counter()
    gpu = torch.cuda.is_available()
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    if gpu:
        batch, warmup, steps = 16, (2 if args.quick else 5), (5 if args.quick else 20)
    else:  # a CPU takes seconds for one r2plus1d_18 step: tiny counts, quick or not
        batch, warmup, steps = 2, 1, 2
    batch = args.batch if args.batch is not None else batch
    warmup = args.warmup if args.warmup is not None else warmup
    steps = args.steps if args.steps is not None else steps

    print("$ " + shlex.join(["python", *sys.argv]))
    for line in device_lines(device):
        print(line)
    print()
    rows = []
    for encoder, shape in (("r2plus1d_18", VIDEO_CLIP), ("resnet18", AUDIO_CLIP)):
        settings = [Compute("fp32"), Compute("bf16")] + ([Compute("bf16", channels_last=True)]
                                                         if encoder == "r2plus1d_18" else [])
        for compute in settings:
            rate, peak, finite = clips_per_second(encoder, shape, device, compute, batch=batch, warmup=warmup,
                                                  steps=steps)
            rows.append((encoder, "x".join(map(str, shape)), compute.precision,
                         "channels_last" if compute.channels_last else "contiguous", rate, peak, finite))
    print(f"train clips/s on {device.type.upper()} through engine.train_epochs, batch {batch}, "
          f"{warmup} warm-up + {steps} timed steps (SGD, random init)")
    print(f"{'encoder':<12} {'clip':<12} {'precision':<9} {'layout':<13} {'clips/s':>9} {'peak GPU MiB':>12} "
          f"{'loss':>6}")
    for encoder, clip, precision, layout, rate, peak, finite in rows:
        print(f"{encoder:<12} {clip:<12} {precision:<9} {layout:<13} {rate:9.2f} "
              f"{(f'{peak:.0f}' if peak is not None else '-'):>12} {'finite' if finite else 'NaN':>6}")
    if not all(r[-1] for r in rows):
        print("NaN: a step's loss or gradient was not finite (the engine stops a run there); its steps were "
              "still timed. On a CPU, torch 2.14's oneDNN bf16 Conv3d weight gradient comes out NaN for some "
              "shapes (README, 'The GPU path').")
    print()
    if not gpu:
        print("GPU parts skipped (no CUDA GPU): GPU throughput and peak memory, and the media run on Ray "
              "with probe trials on GPU shares (probes.resources GPU 0.25).")
    elif args.skip_media:
        print("media run on Ray skipped (--skip-media)")
    else:
        media = media_run(args.quick)
        naive = media[0][1]
        print("media run on a local Ray cluster: r2plus1d_18 + resnet18, bf16, 4 epochs, 1 trainer worker on "
              "GPU 0.25, probe trials on GPU 0.25 each (peak memory is in the Ray workers: not measured here)")
        print(f"{'method':<14} {'rounds':>6} {'wall s':>8} {'/ naive':>8}")
        for method, wall, rounds in media:
            print(f"{method:<14} {rounds:6d} {wall:8.1f} {wall / naive:8.2f}")
    print(f"\n({time.perf_counter() - began:.0f} s in all)")


if __name__ == "__main__":
    main()
