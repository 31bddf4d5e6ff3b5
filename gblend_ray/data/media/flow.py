"""Optical flow for the ``flow`` modality: extracted once, stored quantized, read per clip.

The paper's flow stream (§4, after I3D, Carreira & Zisserman 2017) takes precomputed dense
optical flow at the RGB clip's frames. Computing it on the fly would cost more than the
whole RGB pipeline, so ``extract_flow`` computes it once per video with OpenCV's Farnebäck
method (``cv2.calcOpticalFlowFarneback``; Farnebäck, "Two-frame motion estimation based on
polynomial expansion", SCIA 2003) on grayscale frames whose short side is resized to
``resize``, and stores it the way TSN (Wang et al., ECCV 2016) and I3D do: each component
clipped to ``[-bound, bound]`` pixels and quantized linearly to uint8, a 4 × saving over
float16 that loses less than the estimator's own error.

Storage format (``out_dir``)::

    flow_index.json
        {"format": "gblend-flow/1", "manifest": "<manifest path at extraction>",
         "resize": 128, "bound": 20.0,
         "quantization": "q = round((clip(f, -bound, bound) + bound) / (2 bound) * 255), uint8",
         "videos": {"<key>": {"file": "flows/<stem>-<hash>.npz", "fps": 25.0, "frames": 250,
                              "height": 128, "width": 171}, ...},
         "skipped": {"<video path>": "<reason>", ...}}
    flows/<stem>-<hash>.npz
        one zip (deflate) member per decoded frame, named "000000", "000001", ...: a (2, height,
        width) uint8 array, channel 0 the x (rightward) and channel 1 the y (downward)
        displacement from that frame to the next, in pixels of the resized frame. The last
        frame repeats the flow before it, so there is one field per frame index and a clip
        reads its flow at the same indices as its RGB frames. Members are read
        individually, so a clip decompresses only its own frames.

A video's key is its path relative to the manifest's directory when it lies under it
(so a dataset and its flow can be moved together), else its absolute path. Frame i is the
i-th decoded frame, which for constant-rate video is the frame ``decode.py`` indexes as i.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np

from ...core.spec import ON_BAD_SAMPLE
from .decode import resized_size, video_info
from .manifest import MediaError, read_manifest

INDEX = "flow_index.json"
FORMAT = "gblend-flow/1"
FARNEBACK = {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5, "poly_sigma": 1.2, "flags": 0}
"""OpenCV's documented example parameters for dense flow (also the common TSN-style setting)."""


def quantize(flow: np.ndarray, bound: float) -> np.ndarray:
    """Float flow in pixels → uint8 over ``[-bound, bound]`` (TSN/I3D)."""
    q = (np.clip(flow, -bound, bound) + bound) * (255.0 / (2 * bound))
    return np.round(q).astype(np.uint8)


def dequantize(q: np.ndarray, bound: float) -> np.ndarray:
    """uint8 → float32 flow in pixels; the inverse of ``quantize`` up to ``bound / 255``."""
    return q.astype(np.float32) * np.float32(2 * bound / 255.0) - np.float32(bound)


@dataclass(frozen=True)
class FlowEntry:
    file: str
    """Relative to the flow directory."""
    fps: float
    frames: int
    height: int
    width: int


@dataclass
class FlowIndex:
    """A loaded ``flow_index.json``."""

    root: Path
    bound: float
    resize: int
    videos: dict[str, FlowEntry]
    skipped: dict[str, str] = field(default_factory=dict)

    def entry(self, video: str | Path, manifest_dir: str | Path) -> FlowEntry | None:
        """The flow of ``video`` (an absolute path), or None if it was not extracted."""
        return self.videos.get(_key(Path(video), Path(manifest_dir)))


def _key(video: Path, manifest_dir: Path) -> str:
    try:
        return video.resolve().relative_to(manifest_dir.resolve()).as_posix()
    except ValueError:
        return str(video.resolve())


def load_flow_index(flow_dir: str | Path) -> FlowIndex:
    """Read ``flow_dir/flow_index.json`` (written by ``extract_flow``)."""
    root = Path(flow_dir).expanduser().resolve()
    file = root / INDEX
    if not file.is_file():
        raise MediaError(f"{file}: no flow index; run gblend extract-flow on the manifest with this "
                         "directory as output, or fix data.media.flow_dir")
    try:
        raw = json.loads(file.read_text())
        if raw.get("format") != FORMAT:
            raise ValueError(f"format is {raw.get('format')!r}, expected {FORMAT!r}")
        videos = {k: FlowEntry(str(v["file"]), float(v["fps"]), int(v["frames"]), int(v["height"]), int(v["width"]))
                  for k, v in raw["videos"].items()}
        return FlowIndex(root, float(raw["bound"]), int(raw["resize"]), videos, dict(raw.get("skipped", {})))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise MediaError(f"{file}: not a flow index written by gblend extract-flow ({e}); re-run it") from e


def read_flow(file: str | Path, frames: list[int], bound: float, size: tuple[int, int] | None = None) -> np.ndarray:
    """Flow at frame indices ``frames`` from one flow file: float32 (2, len(frames), H, W),
    dequantized to pixels. With ``size=(H, W)`` each field is resized to that size and its
    vectors scaled by the same factors, so it stays in pixels of the resized frame."""
    out = []
    try:
        with np.load(file) as z:
            for i in frames:
                out.append(dequantize(z[f"{i:06d}"], bound))
    except KeyError:
        raise MediaError(f"{file}: has no flow for frame {i}; the video changed since extraction: "
                         "re-run gblend extract-flow") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise MediaError(f"{file}: cannot be read ({type(e).__name__}: {e}); re-run gblend extract-flow") from e
    flow = np.stack(out, axis=1)  # (2, T, h, w)
    if size is not None and tuple(flow.shape[2:]) != tuple(size):
        h, w = size
        sy, sx = h / flow.shape[2], w / flow.shape[3]
        resized = np.empty((2, flow.shape[1], h, w), np.float32)
        for t in range(flow.shape[1]):
            field_ = cv2.resize(np.ascontiguousarray(flow[:, t].transpose(1, 2, 0)), (w, h), interpolation=cv2.INTER_LINEAR)
            resized[0, t] = field_[..., 0] * sx
            resized[1, t] = field_[..., 1] * sy
        flow = resized
    return flow


def video_flow(path: str | Path, resize: int) -> tuple[np.ndarray, float]:
    """Farnebäck flow of every consecutive frame pair of ``path``: float32 (frames, 2, h, w)
    in pixels of the frame resized to short side ``resize`` (the last frame repeats the
    previous field), and the frame rate. Raises ``ValueError`` or an FFmpeg error for a bad file."""
    with av.open(str(path)) as container:
        info = video_info(container)
        h, w = resized_size(info.height, info.width, resize)
        grays = [f.reformat(width=w, height=h, format="gray").to_ndarray() for f in container.decode(video=0)]
    if not grays:
        raise ValueError("has a video stream but no frame decodes")
    if info.frames and len(grays) < info.frames:
        raise ValueError(f"is truncated or corrupt: only {len(grays)} of the {info.frames} frames its header "
                         "declares decode")
    flows = np.zeros((len(grays), 2, h, w), np.float32)
    for i in range(len(grays) - 1):
        f = cv2.calcOpticalFlowFarneback(grays[i], grays[i + 1], None, **FARNEBACK)
        flows[i] = f.transpose(2, 0, 1)
    if len(grays) > 1:
        flows[-1] = flows[-2]
    return flows, info.fps


def _extract_one(video: str, target: str, resize: int, bound: float) -> dict | str:
    """Worker: write one video's flow file; its index entry, or why it failed."""
    try:
        flows, fps = video_flow(video, resize)
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as e:
        return f"cannot be decoded ({type(e).__name__}: {e}); re-download or re-encode it, or remove the row"
    q = quantize(flows, bound)
    tmp = Path(target).with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **{f"{i:06d}": q[i] for i in range(len(q))})
    tmp.replace(target)  # a killed extraction leaves no half-written file under the final name
    return {"fps": fps, "frames": len(q), "height": int(q.shape[2]), "width": int(q.shape[3])}


def _init_worker() -> None:
    cv2.setNumThreads(1)  # the processes are the parallelism


def extract_flow(manifest_path: str | Path, out_dir: str | Path, *, resize: int = 128, bound: float = 20.0,
                 workers: int = 1, on_bad_sample: str = "error") -> Path:
    """Compute and store the flow of every video in the manifest (format in the module
    docstring); return the index path. ``workers`` processes share the videos. A file that
    does not exist or decode raises ``MediaError`` naming it (``on_bad_sample="error"``)
    or is recorded under ``skipped`` in the index (``"skip"``)."""
    if on_bad_sample not in ON_BAD_SAMPLE:
        raise ValueError(f"on_bad_sample is {on_bad_sample!r}; use one of {ON_BAD_SAMPLE}")
    if resize < 1 or bound <= 0 or workers < 1:
        raise ValueError(f"need resize >= 1, bound > 0, workers >= 1; got {resize}, {bound}, {workers}")
    manifest = read_manifest(manifest_path)
    root = Path(out_dir).expanduser().resolve()
    (root / "flows").mkdir(parents=True, exist_ok=True)
    videos = sorted({row.path for row in manifest.rows})
    jobs = []
    for video in videos:
        digest = hashlib.sha1(str(video).encode()).hexdigest()[:8]
        jobs.append((video, f"flows/{video.stem}-{digest}.npz"))
    args = [(str(v), str(root / rel), resize, bound) for v, rel in jobs]
    if workers == 1:
        _init_worker()
        results = [_extract_one(*a) for a in args]
    else:
        with ProcessPoolExecutor(workers, initializer=_init_worker) as pool:
            results = list(pool.map(_extract_one, *zip(*args)))
    entries, skipped = {}, {}
    for (video, rel), result in zip(jobs, results):
        if not video.is_file():
            result = "does not exist; fix the path (relative to the manifest's directory) or remove the row"
        if isinstance(result, str):
            if on_bad_sample == "error":
                raise MediaError(f"{video}: {result} (manifest {manifest.path}). "
                                 "Or pass on_bad_sample='skip' (--on-bad-sample skip) to leave it out.")
            skipped[str(video)] = result
            continue
        entries[_key(video, manifest.path.parent)] = {"file": rel, **result}
    index = {"format": FORMAT, "manifest": str(manifest.path), "resize": resize, "bound": bound,
             "quantization": "q = round((clip(f, -bound, bound) + bound) / (2 bound) * 255), uint8",
             "videos": entries, "skipped": skipped}
    path = root / INDEX
    path.write_text(json.dumps(index, indent=1))
    return path
