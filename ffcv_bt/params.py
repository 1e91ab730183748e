"""Every configuration section and parameter, declared once: type, help and allowed values.

This is the only schema. No defaults here: rules/base.yaml states every value of the
reference recipe and the protocol files (rules/protocols/) every evaluation setting.
Loading and checking recipes against it is ffcv_bt.config.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROTOCOL_SECTIONS = ("linear", "semi", "knn", "logreg")


@dataclass(frozen=True)
class InRange:
    """Allowed: low <= value <= high."""

    low: float
    high: float

    def allows(self, value: Any) -> bool:
        return self.low <= value <= self.high

    def help(self) -> str:
        return f"between {self.low} and {self.high}"


@dataclass(frozen=True)
class OneOf:
    """Allowed: one of ``choices``."""

    choices: tuple[str, ...]

    def allows(self, value: Any) -> bool:
        return value in self.choices

    def help(self) -> str:
        return f"one of [{', '.join(self.choices)}]"


@dataclass(frozen=True)
class PositiveFloats:
    """Allowed: a comma-separated list of positive floats, e.g. "1e-4,1e-3"."""

    def allows(self, value: Any) -> bool:
        try:
            return all(float(v) > 0 for v in str(value).split(","))
        except ValueError:
            return False

    def help(self) -> str:
        return "comma-separated positive floats"


def float_list(value: str) -> list[float]:
    """The floats of a :class:`PositiveFloats` value, in order."""
    return [float(v) for v in value.split(",")]


KIND_NAMES = {int: "an int", float: "a float", bool: "a boolean", str: "a string"}


@dataclass(frozen=True)
class Param:
    """One parameter: its type (checked strictly by ffcv_bt.config), help and allowed values.
    No default: rules/base.yaml (and the protocol files) state every value once; a recipe
    that does not extend base.yaml must set them all."""

    kind: type
    desc: str
    constraint: InRange | OneOf | PositiveFloats | None = None

    def check(self, value: Any) -> Any:
        """``value`` (already of ``kind``) if allowed, else ValueError."""
        if self.constraint is not None and not self.constraint.allows(value):
            raise ValueError()
        return value

    def help(self) -> str:
        return KIND_NAMES[self.kind] + (f" and {self.constraint.help()}" if self.constraint else "")


@dataclass(frozen=True)
class SectionSpec:
    desc: str
    params: dict[str, Param]


SCHEMA: dict[str, SectionSpec] = {}


def _section(name: str, desc: str, **params: Param) -> None:
    SCHEMA[name] = SectionSpec(desc, params)


def _p(kind: type, desc: str, constraint: InRange | OneOf | None = None) -> Param:
    return Param(kind, desc, constraint)


def _prob(desc: str) -> Param:
    return _p(float, desc, InRange(0.0, 1.0))


_section(
    "data", "The dataset written by write_dataset.py and how to read it",
    dir=_p(str, "folder with train.beton, val.beton, manifest.json and the label subsets"),
    num_workers=_p(int, "FFCV loader worker threads per process", InRange(1, 256)),
    in_memory=_p(bool, "read the .beton into RAM (True) or page it from disk (False)"),
    order=_p(str, "sample order of training loaders", OneOf(("random", "quasi_random"))),
)
_section(
    "resolution", "Progressive training resolution (FFCV ImageNet schedule)",
    min_res=_p(int, "crop size until start_ramp", InRange(8, 1024)),
    max_res=_p(int, "crop size from end_ramp on", InRange(8, 1024)),
    start_ramp=_p(int, "last epoch at min_res", InRange(0, 100000)),
    end_ramp=_p(int, "first epoch at max_res", InRange(0, 100000)),
    multiple=_p(int, "ramp sizes round to the nearest multiple of this (FFCV: 32)",
                InRange(1, 1024)),
)
_section(
    "aug", "Barlow Twins augmentations (two asymmetric views)",
    scale_min=_p(float, "random-resized-crop smallest area fraction", InRange(0.001, 1.0)),
    scale_max=_p(float, "random-resized-crop largest area fraction", InRange(0.001, 1.0)),
    flip_p=_prob("horizontal flip probability (each view)"),
    jitter_p=_prob("colour jitter probability (all four parts under one draw)"),
    brightness=_p(float, "colour jitter brightness strength", InRange(0.0, 1.0)),
    contrast=_p(float, "colour jitter contrast strength", InRange(0.0, 1.0)),
    saturation=_p(float, "colour jitter saturation strength", InRange(0.0, 1.0)),
    hue=_p(float, "colour jitter hue strength", InRange(0.0, 0.5)),
    grayscale_p=_prob("grayscale probability (each view)"),
    blur_p1=_prob("Gaussian blur probability, view 1"),
    blur_p2=_prob("Gaussian blur probability, view 2"),
    blur_sigma_min=_p(float, "blur sigma lower bound", InRange(0.01, 100.0)),
    blur_sigma_max=_p(float, "blur sigma upper bound", InRange(0.01, 100.0)),
    solarize_p1=_prob("solarize probability, view 1"),
    solarize_p2=_prob("solarize probability, view 2"),
    solarize_threshold=_p(int, "solarize pixels at or above this value", InRange(0, 256)),
    device=_p(str, "where jitter, grayscale, blur and solarize run: cpu (numba, in the loader "
              "workers) or gpu (batched torch ops on the training device, same draws)",
              OneOf(("cpu", "gpu"))),
)
_section(
    "model", "Backbone and projector",
    arch=_p(str, "torchvision ResNet",
            OneOf(("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"))),
    width=_p(int, "channels of the first stage (64 = torchvision)", InRange(1, 1024)),
    small_stem=_p(bool, "3x3 stride-1 stem without max-pool, for 28-64 px images"),
    zero_init_residual=_p(bool, "zero the last BN of each residual block"),
    projector=_p(str, "projector layer sizes, e.g. 8192-8192-8192"),
)
_section(
    "loss", "The Barlow Twins objective",
    lambd=_p(float, "weight of the off-diagonal terms", InRange(0.0, 1.0)),
    scale_loss=_p(float, "multiplier of the loss (original runs: 0.024)", InRange(1e-6, 1e6)),
    formulation=_p(str, "cross: d x d matrix; gram: N x N Gram matrices; auto: by shape",
                   OneOf(("auto", "cross", "gram"))),
)
_section(
    "optim", "LARS and the learning-rate schedule",
    batch_size=_p(int, "GLOBAL batch size (all ranks together)", InRange(2, 1 << 20)),
    epochs=_p(int, "pretraining epochs", InRange(1, 100000)),
    lr_weights=_p(float, "learning rate of weights, times batch/256", InRange(0.0, 100.0)),
    lr_biases=_p(float, "learning rate of biases and BN, times batch/256", InRange(0.0, 100.0)),
    weight_decay=_p(float, "weight decay (weights only)", InRange(0.0, 1.0)),
    momentum=_p(float, "LARS momentum", InRange(0.0, 1.0)),
    eta=_p(float, "LARS trust coefficient", InRange(0.0, 1.0)),
    warmup_epochs=_p(float, "linear warmup length in epochs", InRange(0.0, 100000.0)),
    final_lr_ratio=_p(float, "cosine ends at this fraction of the base rate", InRange(0.0, 1.0)),
)
_section(
    "train", "The pretraining loop",
    seed=_p(int, "seed of weights, data order and augmentations", InRange(0, 2**31 - 1)),
    precision=_p(str, "auto: bf16 on GPUs that have it, else fp16 with a GradScaler; fp32 on CPU",
                 OneOf(("auto", "bf16", "fp16", "fp32"))),
    channels_last=_p(bool, "channels_last memory format (GPU only)"),
    compile=_p(bool, "torch.compile the model"),
    log_every=_p(int, "JSON-lines log every N steps", InRange(1, 10**9)),
    max_steps_per_epoch=_p(int, "cut epochs short (0 = full epochs); for smoke runs",
                           InRange(0, 10**9)),
    deterministic=_p(bool, "torch deterministic algorithms (CPU resume tests)"),
    cpu_threads=_p(int, "torch threads on a CPU: 0 = this process's cores minus one (the loader "
                   "keeps one); N = exactly N", InRange(0, 1024)),
    stop_vote_every=_p(int, "steps between the ranks' stop-signal votes (a blocking CPU "
                       "all-reduce; also at each epoch's end; alone: every step)",
                       InRange(1, 10**6)),
)
_section(
    "monitor", "Online monitoring during pretraining (kNN, RankMe, embedding std, loss terms)",
    every_epochs=_p(int, "monitor after every N epochs and after the last (0 = off)",
                    InRange(0, 10**6)),
    train_images=_p(int, "train images whose backbone features the kNN searches (a fixed, "
                    "evenly spaced subset)", InRange(1, 10**8)),
    val_images=_p(int, "held-out val images classified by kNN and embedded for RankMe/std "
                  "(a fixed, evenly spaced subset)", InRange(2, 10**8)),
    knn_k=_p(int, "kNN neighbours that vote", InRange(1, 10000)),
    knn_temperature=_p(float, "kNN votes weigh exp(cosine / temperature)", InRange(1e-4, 100.0)),
    collapse_rank_fraction=_prob("warn when RankMe < this fraction of min(val images, "
                                 "embedding dim)"),
    collapse_std=_p(float, "warn when the mean per-dimension std of the L2-normalised "
                    "embeddings is below this (healthy: about 1/sqrt(dim))", InRange(0.0, 1.0)),
)
_section(
    "eval", "Which evaluation protocol and which backbones to evaluate",
    protocol=_p(str, "protocol file rules/protocols/<name>.yaml (fixed rules)"),
    control=_p(bool, "also evaluate a randomly initialised backbone (the control row; "
               "torchvision's standard initialisation)"),
    supervised=_p(bool, "also train the supervised ceiling (the backbone with labels, same "
                  "images, epochs and resolutions) and evaluate it with the same protocols"),
)
_section(
    "supervised", "The supervised ceiling's recipe (ffcv-imagenet's shape; ffcv_bt/train/supervised.py)",
    lr=_p(float, "peak SGD learning rate, times batch/256", InRange(0.0, 100.0)),
    lr_peak_epoch=_p(float, "the rate ramps linearly 0 -> lr at this epoch -> 0 at the last",
                     InRange(0.0, 100000.0)),
    weight_decay=_p(float, "weight decay (not on BatchNorm nor biases)", InRange(0.0, 1.0)),
    momentum=_p(float, "SGD momentum", InRange(0.0, 1.0)),
    label_smoothing=_p(float, "cross-entropy label smoothing", InRange(0.0, 1.0)),
)
_section(
    "linear", "Linear probe on frozen features (protocol, not recipe)",
    epochs=_p(int, "epochs", InRange(1, 10000)),
    batch_size=_p(int, "GLOBAL batch size", InRange(1, 1 << 20)),
    lr=_p(float, "classifier learning rate", InRange(0.0, 100.0)),
    weight_decay=_p(float, "weight decay", InRange(0.0, 1.0)),
    momentum=_p(float, "SGD momentum", InRange(0.0, 1.0)),
    res=_p(int, "crop size for train and val", InRange(8, 1024)),
    resize=_p(int, "val resize before the centre crop", InRange(8, 2048)),
    precision=_p(str, "frozen forward pass precision (speed path; classifier stays fp32)",
                 OneOf(("auto", "bf16", "fp16", "fp32"))),
)
_section(
    "semi", "Semi-supervised fine-tuning on 1% / 10% of labels (protocol, not recipe)",
    epochs=_p(int, "epochs", InRange(1, 10000)),
    batch_size=_p(int, "GLOBAL batch size", InRange(1, 1 << 20)),
    lr_backbone=_p(float, "backbone learning rate", InRange(0.0, 100.0)),
    lr_classifier=_p(float, "classifier learning rate", InRange(0.0, 100.0)),
    weight_decay=_p(float, "weight decay", InRange(0.0, 1.0)),
    momentum=_p(float, "SGD momentum", InRange(0.0, 1.0)),
    res=_p(int, "crop size for train and val", InRange(8, 1024)),
    resize=_p(int, "val resize before the centre crop", InRange(8, 2048)),
)
_section(
    "knn", "Weighted kNN on frozen features (protocol, not recipe; Wu et al. 2018)",
    k=_p(int, "neighbours that vote", InRange(1, 10000)),
    temperature=_p(float, "votes weigh exp(cosine / temperature)", InRange(1e-4, 100.0)),
    batch_size=_p(int, "GLOBAL batch size of the feature extraction", InRange(1, 1 << 20)),
    res=_p(int, "centre-crop size for train and val features", InRange(8, 1024)),
    resize=_p(int, "resize before the centre crop", InRange(8, 2048)),
    pixel_floor=_p(bool, "also classify raw pixels (the floor; small images only)"),
)
_section(
    "logreg", "L-BFGS logistic regression on frozen, standardised features (protocol, not "
              "recipe; SimCLR's transfer evaluation, Chen et al. 2020)",
    weight_decays=_p(str, "L2 coefficients tried (mean cross-entropy + wd/2 ||W||^2); the one "
                          "with the best held-out top-1 is refitted on all train images",
                     PositiveFloats()),
    held_out=_p(float, "fraction of the train images that scores the coefficients",
                InRange(0.05, 0.5)),
    iterations=_p(int, "L-BFGS iterations at most", InRange(1, 100000)),
    batch_size=_p(int, "GLOBAL batch size of the feature extraction", InRange(1, 1 << 20)),
    res=_p(int, "centre-crop size for train and val features", InRange(8, 1024)),
    resize=_p(int, "resize before the centre crop", InRange(8, 2048)),
    pixel_floor=_p(bool, "also fit raw pixels (the floor; small images only)"),
)
_section(
    "run", "What run.py does (run control: changing it keeps a run folder usable)",
    stages=_p(str, "comma-separated subset of pretrain,knn,logreg,linear,semi1,semi10"),
    seeds=_p(str, "comma-separated train.seed values, one run each (empty: train.seed only)"),
)
_section(
    "estimate", "Throughput used by `run.py --dry-run` to estimate GPU-hours",
    device=_p(str, "device the figures below were measured on"),
    n_devices=_p(int, "devices the run would use", InRange(1, 100000)),
    pretrain_images_per_s=_p(float, "two-view images/s per device (bench/train_step.py)",
                             InRange(0.0, 1e9)),
    eval_images_per_s=_p(float, "evaluation training images/s per device", InRange(0.0, 1e9)),
)
_section(
    "slurm", "SLURM submission through submitit (run.py --slurm)",
    partition=_p(str, "partition"),
    account=_p(str, "account"),
    nodes=_p(int, "nodes", InRange(1, 10000)),
    gpus_per_node=_p(int, "GPUs (= tasks) per node", InRange(1, 64)),
    cpus_per_task=_p(int, "CPU cores per task", InRange(1, 512)),
    timeout_min=_p(int, "time limit per job in minutes (the job requeues itself)",
                   InRange(1, 10**6)),
    folder=_p(str, "submitit logs folder (relative to the run folder)"),
)

ALL_STAGES = ("pretrain", "knn", "logreg", "linear", "semi1", "semi10")
# Sections that say how to run, not what is computed: changing them (--stages, an estimate,
# SLURM settings, the online monitor, which leaves the weights unchanged) keeps a run
# folder usable.
RUN_CONTROL_SECTIONS = ("run", "estimate", "slurm", "monitor")
