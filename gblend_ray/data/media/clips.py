"""Clips: where each clip of a sample is cut (``plan_clips``) and what it becomes per
modality (``video_clips``, ``audio_clips``, ``flow_clips``).

Clips (per sample and modality, for a ``MediaData`` source):

- ``video`` (3, frames, size, size): ``frames`` frames ``stride`` apart, short side resized
  to ``resize`` (FFmpeg's swscale, bilinear), cropped to ``size``, scaled to [0, 1] and
  normalised with the Kinetics mean/std that torchvision's video ResNets were trained with.
  Train: a random clip start, a random crop and a horizontal flip with probability 1/2,
  drawn from ``(seed, epoch, sample index)`` so an epoch is reproducible whatever the worker
  count. Eval: the centre clip and the centre crop. With K clips per sample (the paper's
  video-level evaluation), K uniformly spaced starts from the first to the last possible
  (in training too, each clip then with its own random crop and flip).
- ``audio`` (1, n_mels, mel_frames): the audio of the clip's time span ``[t, t + frames *
  stride / fps)``, decoded from the same file, mixed to mono and resampled to
  ``sample_rate`` (swresample), then ``torchaudio.transforms.MelSpectrogram`` with a hop of
  ``ceil(window / mel_frames)`` samples and an FFT window of the next power of two of at
  least two hops and 25 ms (no longer than the window itself), then ``log(mel + 1e-6)``,
  padded (with ``log(1e-6)``) or trimmed to exactly ``mel_frames`` frames.
- ``flow`` (2, frames, size, size): the stored flow (``flow.py``) at the same frame indices,
  resized to the RGB frame's resized size (vectors scaled with it), the same crop and flip
  (a flip negates the x component), divided by the quantization bound so it lies in
  [-1, 1] (I3D's scaling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import av
import numpy as np
import torch
import torch.nn.functional as F

from ...core.spec import MediaSpec
from .decode import VideoInfo, decode_audio, decode_frames, resized_size
from .flow import read_flow
from .manifest import MediaError

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
"""RGB mean of Kinetics-400, as torchvision's video ResNets (r3d_18, r2plus1d_18, mc3_18) normalise."""
KINETICS_STD = (0.22803, 0.22145, 0.216989)
_NORMALISE = ((np.arange(256)[None] / 255.0 - np.array(KINETICS_MEAN)[:, None])
              / np.array(KINETICS_STD)[:, None]).astype(np.float32)
"""(3, 256): channel c's normalised value of each 8-bit level."""
LOG_EPS = 1e-6
"""Added to the Mel power before the log, so that silence gives a finite value."""


@dataclass(frozen=True)
class ClipSource:
    """One sample's file as checked at load time: frames ``[first, stop)`` are usable."""

    path: str
    index: int
    """The sample's row in the dataset: seeds its augmentation."""
    info: VideoInfo
    first: int
    stop: int
    flow: str | None = None
    """Its flow file (``flow.py``) when the flow modality is loaded."""


@dataclass(frozen=True)
class ClipPlan:
    """What one clip is cut from: its first frame, frame indices, crop and flip, time span."""

    start: int
    frames: tuple[int, ...]
    top: int
    left: int
    flip: bool
    t_from: float
    t_to: float


def _rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, index]))


def plan_clips(clip: ClipSource, spec: MediaSpec, k: int, augment: bool, seed: int, epoch: int) -> list[ClipPlan]:
    """The ``k`` clips of one sample (module docstring): deterministic in (seed, epoch, sample index)."""
    span = spec.frames * spec.stride
    lo, hi = clip.first, clip.stop - span
    rng = _rng(seed, epoch, clip.index)
    if k > 1:
        starts = [lo + round((hi - lo) * j / (k - 1)) for j in range(k)]
    elif augment:
        starts = [int(rng.integers(lo, hi + 1))]
    else:
        starts = [(lo + hi) // 2]
    h, w = resized_size(clip.info.height, clip.info.width, spec.resize)
    plans = []
    for s in starts:
        if augment:
            top, left, flip = int(rng.integers(0, h - spec.size + 1)), int(rng.integers(0, w - spec.size + 1)), bool(rng.random() < 0.5)
        else:
            top, left, flip = (h - spec.size) // 2, (w - spec.size) // 2, False
        t_from = clip.info.start_time + s / clip.info.fps
        plans.append(ClipPlan(s, tuple(s + j * spec.stride for j in range(spec.frames)), top, left, flip,
                              t_from, t_from + span / clip.info.fps))
    return plans


def video_clips(container: av.container.InputContainer, clip: ClipSource, plans: list[ClipPlan],
                spec: MediaSpec) -> torch.Tensor:
    """(K, 3, frames, size, size): the RGB frames of each planned clip, cropped, flipped and
    normalised."""
    h, w = resized_size(clip.info.height, clip.info.width, spec.resize)
    wanted = sorted({i for p in plans for i in p.frames})
    found, _ = decode_frames(container, clip.info, wanted,
                             lambda f: f.reformat(width=w, height=h, format="rgb24").to_ndarray())
    missing = [i for i in wanted if i not in found]
    if missing:
        raise MediaError(f"{clip.path}: decoding stops before frame {missing[0]} of the {clip.info.frames} its "
                         "header declares (it decoded at load time: the file changed or is corrupt); "
                         "re-encode or remove it")
    s = spec.size
    out = np.empty((len(plans), 3, spec.frames, s, s), np.float32)
    for k, p in enumerate(plans):
        for t, i in enumerate(p.frames):
            crop = found[i][p.top:p.top + s, p.left:p.left + s]
            if p.flip:
                crop = crop[:, ::-1]
            for c in range(3):  # uint8 -> normalised float by table look-up: one pass, no torch threads
                out[k, c, t] = _NORMALISE[c][crop[..., c]]
    return torch.from_numpy(out)


class LogMel:
    """The log-Mel transform of an audio window, one ``MelSpectrogram`` per window length
    (built on first use: each DataLoader worker keeps its own)."""

    def __init__(self, spec: MediaSpec):
        self.spec = spec
        self._mels: dict[int, torch.nn.Module] = {}

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        """(1, n_mels, mel_frames) of a mono waveform."""
        spec = self.spec
        n = len(wave)
        mel = self._mels.get(n)
        if mel is None:
            import torchaudio.transforms as T

            # a 25-ms window at least (the usual speech/audio-event setting), two hops at least,
            # never longer than the clip's window itself (centre padding reflects at most n - 1)
            hop = max(1, math.ceil(n / spec.mel_frames))
            n_fft = 1 << max(math.ceil(math.log2(max(2 * hop, 0.025 * spec.sample_rate))), 4)
            n_fft = max(min(n_fft, 1 << max(int(math.log2(max(n, 2))), 1)), 2)
            mel = self._mels[n] = T.MelSpectrogram(sample_rate=spec.sample_rate, n_fft=n_fft, hop_length=hop,
                                                   n_mels=spec.n_mels, power=2.0)
        x = torch.log(mel(wave) + LOG_EPS)[None]  # (1, n_mels, frames)
        frames = x.shape[-1]
        if frames < spec.mel_frames:
            x = F.pad(x, (0, spec.mel_frames - frames), value=math.log(LOG_EPS))
        return x[..., : spec.mel_frames]


def audio_clips(container: av.container.InputContainer, plans: list[ClipPlan], log_mel: LogMel) -> torch.Tensor:
    """(K, 1, n_mels, mel_frames): the log-Mel spectrogram of each planned clip's time span,
    from one decode of the span they cover together."""
    sr = log_mel.spec.sample_rate
    t0, t1 = min(p.t_from for p in plans), max(p.t_to for p in plans)
    wave = decode_audio(container, t0, t1, sr)
    out = []
    for p in plans:
        a = round((p.t_from - t0) * sr)
        n = round((p.t_to - p.t_from) * sr)
        piece = torch.from_numpy(np.ascontiguousarray(wave[a:a + n]))
        if len(piece) < n:
            piece = F.pad(piece, (0, n - len(piece)))
        out.append(log_mel(piece))
    return torch.stack(out)


def flow_clips(clip: ClipSource, plans: list[ClipPlan], spec: MediaSpec, bound: float) -> torch.Tensor:
    """(K, 2, frames, size, size): the stored flow at each planned clip's frames, with the
    RGB clip's crop and flip, in [-1, 1]."""
    h, w = resized_size(clip.info.height, clip.info.width, spec.resize)
    wanted = sorted({i for p in plans for i in p.frames})
    flows = read_flow(clip.flow, wanted, bound, size=(h, w))  # (2, T, h, w) pixels
    where = {i: j for j, i in enumerate(wanted)}
    out = []
    for p in plans:
        x = flows[:, [where[i] for i in p.frames], p.top:p.top + spec.size, p.left:p.left + spec.size]
        x = torch.from_numpy(np.ascontiguousarray(x)) / bound
        if p.flip:
            x = x.flip(-1)
            x[0] = -x[0]  # a mirrored motion to the right is a motion to the left
        out.append(x)
    return torch.stack(out)
