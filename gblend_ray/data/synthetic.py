"""Synthetic multi-modal benchmarks in the on-disk dataset format.

``av-overfit`` reproduces the paper's phenomenon on feature vectors in seconds: one
modality that generalizes and one that is easy to memorize yet carries complementary,
weaker information.

Generative model (``av-overfit``; C classes in C/2 pairs {2j, 2j+1}):

- ``video`` (generalizes, ``video_dim`` dims): ``x_v = s_v (μ_v[y] + σ_v ε)``. The class
  means are random Gaussian prototypes, except that the two classes of a pair share all
  but a small offset (``pair_offset``), so video identifies the pair well and the class
  within the pair poorly. Low dimension and isotropic noise: hard to memorize.
- ``audio`` (memorizes, ``audio_dim`` dims): ``x_a = μ_a[y] + σ_a ε``. Its class means
  are independent of video's, so they separate the two classes of every pair (the
  information video lacks), but weakly (``audio_signal``); its noise lives in many more
  dimensions than there are train samples per class, so each sample's noise is a
  fingerprint that a network can fit quickly while it carries nothing about the label.

So the Bayes-optimal use of both modalities beats video alone, a network that leans on
audio's memorizable part overfits, and the modalities overfit at clearly different
rates — what G-Blend's weights are meant to sort out.

``av-weak-audio`` (the quickstart's) is ``av-overfit`` with a weaker audio class signal
(``audio_signal`` 0.18 instead of 0.2), everything else equal. On the engine of today
``av-overfit``'s naive fusion no longer falls below video alone (the parameters were
chosen on an earlier one; its figures in the README stay as measured); here it falls
below by about 3 points over 3 seeds, which is the problem G-Blend is for.

Generative model (``av3``; three modalities, so G-Blend weighs four heads): ``video``,
``audio``, the labels and the split are exactly ``av-overfit``'s for the same seed and
parameters (the same draws from the same stream), plus

- ``flow`` (in between, ``flow_dim`` dims): ``x_f = s_f (μ_f[y] + σ_f ε)`` with
  ``μ_f[2j+1] = +d_j`` and ``μ_f[2j] = -d_j`` for a random direction ``d_j`` per pair
  (length ``flow_signal`` in noise units, scaled as video's prototypes). Its signal is
  the within-pair contrast that video lacks, at a moderate strength; across pairs it
  tells the classes apart only weakly, as the directions of different pairs are nearly
  orthogonal. Medium width (more dimensions than video, fewer than audio) and a medium
  input scale ``s_f``: it learns faster than video and memorizes slower than audio.
  It is drawn from its own random stream (``SeedSequence(seed, spawn_key=(1,))``), so
  adding it changes none of the other arrays.

So the three uni-modal networks generalize to clearly different levels and overfit at
clearly different rates: video slowly and little, flow moderately, audio fast.

The generator's parameters are fixed per preset; a preset seed picks one draw of the
prototypes and samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .arrays import save_dataset


@dataclass(frozen=True)
class AVOverfit:
    """Parameters of the ``av-overfit`` model (module docstring). Chosen once, in a small
    search over the video input scale, the audio width and the audio signal on the draw
    of preset seed 0, for naive fusion to fall below video alone; the same for every
    seed, never tuned per seed."""

    num_classes: int = 10
    num_samples: int = 4000
    train_fraction: float = 0.5
    val_fraction: float = 0.1
    video_dim: int = 16
    video_noise: float = 1.0
    video_separation: float = 2.0
    """Distance scale of the pair prototypes, in units of the noise."""
    pair_offset: float = 0.35
    """How far apart the two classes of a pair lie in video (small: video confuses them)."""
    video_scale: float = 0.1
    """Overall input scale: small inputs make the video branch slow to learn, as a deep
    visual backbone is, while the audio branch fits its train samples fast."""
    audio_dim: int = 512
    audio_signal: float = 0.2
    """Class-mean strength in audio: weak, but independent of video's confusions."""
    audio_noise: float = 1.0


@dataclass(frozen=True)
class AV3(AVOverfit):
    """Parameters of the ``av3`` model (module docstring): ``av-overfit``'s (inherited:
    same meaning, same defaults) and the ``flow`` modality's. The flow parameters were
    chosen once, on the draw of preset seed 0, for the three uni-modal networks to overfit
    at clearly different rates; the same for every seed, never tuned per seed."""

    flow_dim: int = 128
    flow_signal: float = 0.35
    """Length of the within-pair direction ``d_j`` in noise units (times ``sqrt(flow_dim)/2``)."""
    flow_noise: float = 1.0
    flow_scale: float = 0.3
    """Overall input scale: between video's (slow to learn) and audio's (1, fast)."""


PRESETS = {"av-overfit": AVOverfit(), "av-weak-audio": AVOverfit(audio_signal=0.18), "av3": AV3()}


def _unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((rows, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_av_overfit(p: AVOverfit, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Draw (modalities, labels, split) from the ``av-overfit`` model above."""
    return _video_audio(p, seed, "av-overfit")


def _video_audio(p: AVOverfit | AV3, seed: int, preset: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """``av-overfit``'s draws (video, audio, labels, split), in its order, from ``seed``'s stream."""
    if p.num_classes % 2:
        raise ValueError(f"{preset} needs an even num_classes (classes come in pairs), got {p.num_classes}")
    rng = np.random.default_rng(seed)
    n, c = p.num_samples, p.num_classes
    labels = rng.permutation(np.arange(n) % c)

    pair_means = p.video_separation * _unit_rows(rng, c // 2, p.video_dim) * np.sqrt(p.video_dim) / 2
    within = p.pair_offset * _unit_rows(rng, c // 2, p.video_dim) * np.sqrt(p.video_dim) / 2
    video_means = np.repeat(pair_means, 2, axis=0)
    video_means[1::2] += within
    video_means[0::2] -= within
    video = p.video_scale * (video_means[labels] + p.video_noise * rng.standard_normal((n, p.video_dim)))

    audio_means = p.audio_signal * _unit_rows(rng, c, p.audio_dim) * np.sqrt(p.audio_dim) / 2
    audio = audio_means[labels] + p.audio_noise * rng.standard_normal((n, p.audio_dim))

    n_train = int(round(p.train_fraction * n))
    n_val = int(round(p.val_fraction * n))
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val))
    return {"video": video.astype(np.float32), "audio": audio.astype(np.float32)}, labels, split


FLOW_STREAM = 1
"""``spawn_key`` of the ``av3`` flow modality's own random stream."""


def make_av3(p: AV3, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Draw (modalities, labels, split) from the ``av3`` model above: ``av-overfit``'s
    video, audio, labels and split, then ``flow`` from its own stream."""
    modalities, labels, split = _video_audio(p, seed, "av3")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(FLOW_STREAM,)))
    n, c = p.num_samples, p.num_classes
    directions = p.flow_signal * _unit_rows(rng, c // 2, p.flow_dim) * np.sqrt(p.flow_dim) / 2
    flow_means = np.repeat(directions, 2, axis=0)
    flow_means[0::2] *= -1
    flow = p.flow_scale * (flow_means[labels] + p.flow_noise * rng.standard_normal((n, p.flow_dim)))
    return {**modalities, "flow": flow.astype(np.float32)}, labels, split


_MAKERS = {"av-overfit": make_av_overfit, "av-weak-audio": make_av_overfit, "av3": make_av3}


def generate_preset(preset: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write preset ``preset`` drawn with ``seed`` to ``out_dir`` in the on-disk format."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: available presets are {sorted(PRESETS)}")
    params = PRESETS[preset]
    modalities, labels, split = _MAKERS[preset](params, seed)
    path = save_dataset(out_dir, modalities, labels, [f"class{i}" for i in range(params.num_classes)],
                        split=split, name=preset)
    (Path(path) / "generator.yaml").write_text(
        "".join(f"{k}: {v}\n" for k, v in {"preset": preset, "seed": seed, **asdict(params)}.items())
    )
    return Path(path)
