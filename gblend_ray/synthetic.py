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
rates — what G-Blend's weights are meant to sort out. The generator's parameters are
fixed per preset; a preset seed picks one draw of the prototypes and samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .data import save_dataset


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


PRESETS = {"av-overfit": AVOverfit()}


def _unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((rows, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_av_overfit(p: AVOverfit, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Draw (modalities, labels, split) from the ``av-overfit`` model above."""
    if p.num_classes % 2:
        raise ValueError(f"av-overfit needs an even num_classes (classes come in pairs), got {p.num_classes}")
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


def generate_preset(preset: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write preset ``preset`` drawn with ``seed`` to ``out_dir`` in the on-disk format."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: available presets are {sorted(PRESETS)}")
    params = PRESETS[preset]
    modalities, labels, split = make_av_overfit(params, seed)
    path = save_dataset(out_dir, modalities, labels, [f"class{i}" for i in range(params.num_classes)],
                        split=split, name=preset)
    (Path(path) / "generator.yaml").write_text(
        "".join(f"{k}: {v}\n" for k, v in {"preset": preset, "seed": seed, **asdict(params)}.items())
    )
    return Path(path)
