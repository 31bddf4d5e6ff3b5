"""What a run is: the typed specification every layer reads.

Plain dataclasses with documented defaults and no behaviour beyond small derived
properties, so that the math, engine, orchestration and interface layers can all take
a ``RunSpec`` without importing anything heavier than this module. Loading one from
YAML, ``--set`` overrides and validation against a dataset live in
``interfaces/config``.

Every closed set of choices is a ``Literal`` type here, beside the field it constrains,
with its values as a tuple (``SCHEDULES``, ``OPTIMIZERS``, ...): the config loader checks
a value against the field's type, and the CLI's ``choices=`` and the modules that act
on a value read the same tuple.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

OnBadSample = Literal["error", "skip"]
Optimizer = Literal["sgd", "adam", "adagrad"]
LRSchedule = Literal["constant", "cosine"]
Schedule = Literal["offline", "online"]
BlendMetric = Literal["loss", "accuracy"]
Safeguard = Literal["floor", "head_train", "none"]
ProbeMode = Literal["tune", "inline"]
TrackingBackend = Literal["wandb", "none"]
WandbMode = Literal["online", "offline", "disabled"]
OGMScores = Literal["heads", "linear"]
OGMParams = Literal["auto", "conv", "weights"]
Precision = Literal["fp32", "bf16", "fp16"]

ON_BAD_SAMPLE: tuple[str, ...] = get_args(OnBadSample)
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
LR_SCHEDULES: tuple[str, ...] = get_args(LRSchedule)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
BLEND_METRICS: tuple[str, ...] = get_args(BlendMetric)
SAFEGUARDS: tuple[str, ...] = get_args(Safeguard)
PROBE_MODES: tuple[str, ...] = get_args(ProbeMode)
TRACKING_BACKENDS: tuple[str, ...] = get_args(TrackingBackend)
WANDB_MODES: tuple[str, ...] = get_args(WandbMode)
OGM_SCORES: tuple[str, ...] = get_args(OGMScores)
OGM_PARAMS: tuple[str, ...] = get_args(OGMParams)
PRECISIONS: tuple[str, ...] = get_args(Precision)


@dataclass
class MediaSpec:
    """How clips are cut from video files (``data.path`` is a media manifest; see
    ``media.py``). Paper: 16 RGB frames at 224x224, audio as 100 x 40 log-Mel."""

    frames: int = 8
    """Frames per RGB (and flow) clip (paper: 16)."""
    stride: int = 2
    """Step between a clip's frames, in decoded frames."""
    resize: int = 128
    """Frames are resized so their short side is this many pixels, then cropped."""
    size: int = 112
    """Crop size (train: random crop and horizontal flip; eval: centre crop). Paper: 224."""
    sample_rate: int = 16000
    """Audio is resampled to this rate before the log-Mel transform."""
    n_mels: int = 40
    """Mel filters (paper: 40)."""
    mel_frames: int = 100
    """Temporal frames of the log-Mel spectrogram of one clip's audio window (paper: 100)."""
    flow_dir: str | None = None
    """Output directory of ``gblend extract-flow`` (needed for the ``flow`` modality)."""
    eval_clips: int = 10
    """K: uniformly spaced clips per video whose predictions are averaged at test time
    (video-level top-1/top-5; paper: 10)."""
    eval_clip_batch: int = 32
    """Clips per evaluation batch (a batch holds this many clips divided by K samples):
    ``train.eval_batch_size`` is sized for feature vectors, far too many video clips."""
    num_workers: int = 2
    """DataLoader worker processes that decode and transform clips. With any, each source
    (T, T', V, test) keeps its workers between epochs (``persistent_workers``)."""
    prefetch_factor: int = 2
    """Batches each worker decodes ahead (the DataLoader's ``prefetch_factor``); unused
    with ``num_workers: 0``."""
    on_bad_sample: OnBadSample = "error"
    """``error``: stop at an unreadable, truncated or too short file (or one without an
    audio stream when audio is used), naming it; ``skip``: leave it out, count it and
    name it in the run's results."""


@dataclass
class DataSpec:
    """Where the data is and how the train split is cut into T, V and T'."""

    path: str = ""
    """An on-disk dataset directory (``meta.yaml``, ``<modality>.npy``, ``labels.npy``);
    ``{preset}`` in it stands for ``preset``."""
    modalities: list[str] | None = None
    """Train on these of the dataset's modalities only (default: all), e.g. for the
    modality ablation."""
    preset: str | None = None
    """A synthetic preset (``gblend make-synthetic --preset``) or a real data set
    (``gblend make-dataset``) written to ``path`` on first use."""
    preset_seed: int = 0
    """The generator's seed for ``preset`` (a real set: the seed of its drawn splits);
    fixed per data set, independent of the run's seed."""
    heldout_fraction: float = 0.1
    """Share of the train split held out as V (paper: 8% Kinetics, 13% mini-AudioSet)."""
    subset_size: int | None = None
    """Size of T', the subset of T on which train loss is measured (default: |V|)."""
    val_fraction: float = 0.1
    """Used only when the dataset has no ``split.npy``."""
    test_fraction: float = 0.2
    """Used only when the dataset has no ``split.npy``."""
    media: MediaSpec = field(default_factory=MediaSpec)
    """Clip settings when ``path`` is a media manifest (ignored for array datasets)."""


@dataclass
class ModelSpec:
    """The multi-head network: one encoder per modality, a head each, the fused head."""

    encoder: str = "mlp"
    """Encoder registry name used for every modality unless ``encoders`` names one."""
    encoders: dict[str, str] = field(default_factory=dict)
    """Per-modality encoder overrides, e.g. ``{audio: mlp}``."""
    weights: dict[str, str] = field(default_factory=dict)
    """modality → path of a local state dict (torch.save) loaded into that modality's
    encoder after it is built; nothing is downloaded."""
    hidden_dim: int = 128
    feature_dim: int = 64
    fusion: str = "concat"
    """Fusion registry name (late concatenation, paper §3.1)."""
    fusion_hidden_dim: int = 128
    """Width of the fused head's two hidden layers; 0 makes the fused head one linear layer
    on the fused features (a linear late-fusion head, which OGM-GE's official setting splits
    by modality: ``balancing.ogm.scores: linear``). Not for ``lmf``, whose fused vector has
    this width."""
    dropout: float = 0.0
    fusion_dropout: float = 0.0
    """Dropout on the fused head's input, the concatenated (or gated) features of every
    modality; method ``dropout`` sets it to ``baselines.dropout``."""


@dataclass
class OptimSpec:
    """Optimizer and learning-rate schedule, shared by the main run and every probe."""

    name: Optimizer = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: LRSchedule = "constant"
    """``constant`` or ``cosine`` (over the run's epochs; probes continue it from their checkpoint)."""


@dataclass
class TrainSpec:
    epochs: int = 30
    batch_size: int = 64
    eval_batch_size: int = 1024
    device: str = "cpu"
    threads: int | None = None
    """torch intra-op threads; None leaves torch's default."""
    precision: Precision = "fp32"
    """``fp32``: no autocast. ``bf16`` or ``fp16``: the forward passes and losses of
    training, evaluation and every probe run under ``torch.autocast`` with that dtype on the
    model's device (CPU or CUDA); the parameters, their gradients and the optimizer stay
    fp32. ``fp16`` adds a ``GradScaler``, unscaled before any balancing method reads or
    changes the gradients. bf16 needs no scaler and is the one to try first on a GPU."""
    channels_last: bool = False
    """Keep 5-D video backbones and their (N, C, T, H, W) clips in ``channels_last_3d`` and
    4-D ones (log-Mel ResNets) in ``channels_last``: faster convolutions on recent GPUs,
    the same results within rounding. Feature vectors are untouched."""


@dataclass
class BlendSpec:
    """Gradient-Blending settings (paper §2.3–2.4, DESIGN §2)."""

    schedule: Schedule = "online"
    """``offline`` (Algorithm 2) or ``online`` (Algorithm 3)."""
    warmup_epochs: int = 10
    """Length of the first super-epoch in online G-Blend (paper: 10)."""
    super_epoch: int = 5
    """Length of every later super-epoch in online G-Blend (paper: 5)."""
    probe_epochs: int | None = None
    """Probe horizon n; default: the length of the super-epoch being estimated
    (offline: the whole run)."""
    metric: BlendMetric = "accuracy"
    """``accuracy`` (top-1; mAP for a multi-label task) or ``loss``: what G and O are
    measured in. The paper calls them equally effective and Algorithm 1 writes the loss;
    the default is accuracy, chosen on the benchmark suite (README, "Defaults"): an
    over-confident probe's validation loss rises while its accuracy rises too, so at long
    horizons and on small data the loss gives G <= 0 for every head."""
    eps: float = 1e-8
    """Added to ΔO² so that a probe whose overfitting did not change gives a finite weight."""
    safeguard: Safeguard = "head_train"
    """What keeps the prediction head learning when its estimated weight is low:
    ``head_train`` (its own parameters always train at full weight; the blend acts on the
    encoders), ``floor`` (its weight is raised to ``floor``), or ``none`` (Algorithm 3 as
    written). The default was chosen on the benchmark suite (README, "Defaults")."""
    floor: float = 0.3
    """The prediction head's minimum weight under ``safeguard: floor``."""


@dataclass
class BaselinesSpec:
    """Settings of the regularizing baselines G-Blend is compared with (paper Table 5)."""

    dropout: float = 0.5
    """Method ``dropout``: dropout rate on the fused head's concatenated input."""
    pretrain_epochs: int | None = None
    """Method ``pretrain``: epochs of uni-modal training of every encoder before the
    fused model is fine-tuned for ``train.epochs`` (default: ``train.epochs``)."""
    patience: int = 5
    """Method ``early_stop``: stop after this many epochs without a lower fused loss on V;
    the model of the best epoch is kept."""


@dataclass
class OGMSpec:
    """OGM-GE and OGM (Peng et al., CVPR 2022; official ``GeWu-Lab/OGM-GE_CVPR2022``)."""

    alpha: float = 0.8
    """α in ``k = 1 − tanh(α·ρ)``. The official code requires it (no default); its README
    gives 0.8 for CREMA-D and 0.1 for VGGSound; the default is CREMA-D's."""
    modulation_starts: int = 0
    """First epoch (0-based, inclusive) whose steps are modulated (official default 0)."""
    modulation_ends: int | None = 50
    """Last modulated epoch (inclusive; official default 50); null: every epoch to the end."""
    scores: OGMScores = "heads"
    """How each modality's score s^m is read on our network. ``heads``: from its own head
    trained on features detached from the encoders (the encoders still learn from the fused
    loss alone); ``linear``: the official split of a linear fused head, z^m = W^m φ^m + b/M
    (needs ``model.fusion: concat`` and ``model.fusion_hidden_dim: 0``)."""
    params: OGMParams = "auto"
    """Which gradient tensors of an encoder are modulated: ``conv`` (kernels, official),
    ``weights`` (every tensor of 2+ dimensions: an MLP's weight matrices), ``auto`` (``conv``
    for an encoder with kernels, else ``weights``)."""


@dataclass
class PMRSpec:
    """PMR (Fan et al., CVPR 2023; official ``fanyunfeng-bit/Modal-Imbalance-PMR``)."""

    alpha: float = 1.0
    """Weight of the prototype cross-entropy given to the weaker modality (official 1.0)."""
    momentum: float = 0.2
    """μ in ``c ← (1 − μ) c_new + μ c_old`` (official ``momentum_coef`` 0.2)."""
    prototype_fraction: float = 0.1
    """Share of each epoch's training batches whose features make the prototypes (official ~10%)."""
    modulation_starts: int = 0
    modulation_ends: int | None = 100
    """Epochs (0-based, inclusive) with the prototype loss (official 0–100); null: to the end."""


@dataclass
class AGMSpec:
    """AGM (Li et al., ICCV 2023; official ``lihong2303/AGM_ICCV2023``)."""

    alpha: float = 1.5
    """α in ``κ = exp(α · min(r̄ − r, 10))``; per data set in the official code (CREMA-D 1.5,
    AV-MNIST 2.5); the default is CREMA-D's."""
    modulation_starts: int = 0
    modulation_ends: int | None = None
    """Epochs (0-based, inclusive) whose gradients are scaled by κ; null: every epoch. The
    running means are updated on every step, inside the window or not (official)."""


@dataclass
class MMParetoSpec:
    """MMPareto (Wei & Hu, ICML 2024; official ``GeWu-Lab/MMPareto_ICML2024``)."""

    gamma: float = 1.5
    """γ, the magnitude factor of the combined encoder gradient (official 1.5)."""


@dataclass
class BalancingSpec:
    """Hyperparameters of the modality-balancing methods (``method: ogm_ge | ogm | pmr | agm
    | mmpareto``), defaulting to the authors' released code. The run's optimizer
    (``optim``) is the one every method shares, so rows of one table differ by method only."""

    ogm: OGMSpec = field(default_factory=OGMSpec)
    pmr: PMRSpec = field(default_factory=PMRSpec)
    agm: AGMSpec = field(default_factory=AGMSpec)
    mmpareto: MMParetoSpec = field(default_factory=MMParetoSpec)


@dataclass
class TrainerSpec:
    """The Ray Train side of a run (ignored by the in-process runner)."""

    num_workers: int = 1
    """DDP workers (``gloo`` on CPU, ``nccl`` with ``use_gpu``)."""
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = field(default_factory=lambda: {"CPU": 1.0})
    max_failures: int = 1
    """Worker-group restarts allowed (a lost node, a preempted worker); each resumes from
    the last boundary checkpoint. A run that diverges is not restarted."""
    resource_wait_s: float | None = None
    """How long a run waits for an autoscaling cluster to add what it needs (asked for
    with ``ray.autoscaler.sdk.request_resources``) before it fails; default 600 s on a
    cluster it joined (``RAY_ADDRESS``), 0 on a local cluster it started."""


@dataclass
class ProbesSpec:
    """Where G-Blend's probes run in the Ray engine."""

    mode: ProbeMode = "tune"
    """``tune``: concurrent Ray Tune trials; ``inline``: one after another inside rank 0
    (a machine with a single GPU)."""
    resources: dict[str, float] = field(default_factory=lambda: {"CPU": 0.25})
    """Resources of one probe trial. Logical CPUs only place work (a probe trial runs one
    torch thread unless ``train.threads`` says otherwise), so the default lets a trainer
    worker and three probe trials fit on two cores. A ``GPU`` share puts each trial on a
    GPU (with ``trainer.use_gpu``): ``{GPU: 0.25}`` lets four trials share one; a share
    above 1 must be a whole number of GPUs."""
    max_concurrent: int | None = None
    """Probe trials running at once (default: one per head, k+1)."""
    subset: float = 1.0
    """Fraction of T the probes train on (T' and V unchanged): 1.0 is Algorithm 1 exactly;
    less departs from it (the supplement notes the weights can be estimated on a subset).
    One seeded subset per round, the same for every head's probe."""
    overlap: bool = False
    """Overlapped rounds (online G-Blend on Ray Tune probes only). False: Algorithm 3
    exactly, the trainer waits at each boundary for the round's weights. True: it submits
    the round and trains on with the weights in force, switching to the new ones at the
    first step after they arrive (every rank at the same step); before the warm-up round's
    weights arrive it trains with uniform weights (the ``floor`` safeguard applied). At most
    one round is in flight: at the next boundary a round not yet arrived is waited for. This
    departs from Algorithm 3 (each estimate applies some steps late, the first one to a model
    already trained past its checkpoint); ``trajectory.json`` records where each took effect."""


@dataclass
class TrackingSpec:
    """Where a run's progress goes besides the run directory's local mirror
    (``metrics.jsonl``, ``rounds.jsonl``, ``rounds.csv``), which is always written."""

    backend: TrackingBackend = "wandb"
    """``wandb`` or ``none``."""
    project: str = "gblend_ray"
    group: str | None = None
    """Runs of one sweep share a group (set by ``gblend sweep``)."""
    mode: WandbMode | None = None
    """W&B mode; default ``online`` if an API key is configured, else ``offline``."""


@dataclass
class RunSpec:
    """One experiment: a method trained on a dataset with a seed."""

    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    blend: BlendSpec = field(default_factory=BlendSpec)
    baselines: BaselinesSpec = field(default_factory=BaselinesSpec)
    balancing: BalancingSpec = field(default_factory=BalancingSpec)
    trainer: TrainerSpec = field(default_factory=TrainerSpec)
    probes: ProbesSpec = field(default_factory=ProbesSpec)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    method: str = "gblend:online"
    """``uni:<modality>``, ``naive``, ``aux``, ``dropout``, ``pretrain``, ``uncertainty``,
    ``early_stop``, the balancing methods ``ogm_ge``, ``ogm``, ``pmr``, ``agm``, ``mmpareto``
    (settings under ``balancing``), ``gblend`` (schedule from ``blend.schedule``), ``gblend:offline`` or
    ``gblend:online`` (see ``plan.py``)."""
    seed: int = 0
    name: str | None = None
