"""Published Barlow Twins results, as data: none of these was run here.

Each entry states its public source. The tables show them in their own "published, not
run here" sections; deltas are against PAPER, and cost ratios against BASELINE_HOURS.
Accuracies are percent (top-1, top-5); a top-5 of None was not published.
"""
from __future__ import annotations

from dataclasses import dataclass

Accuracy = tuple[float, "float | None"]

PAPER_SOURCE = "Zbontar et al. 2021, arXiv 2103.03230"
PAPER_URL = "https://arxiv.org/abs/2103.03230"
BT_REPO = "https://github.com/facebookresearch/barlowtwins"
IMAGENET_1K = "ImageNet-1k"
IMAGENET_100 = "ImageNet-100"


@dataclass(frozen=True)
class Published:
    """One published result: what was trained, how it scored, what it cost if known."""

    name: str
    source: str  # who published it, where
    url: str
    schedule: str
    epochs: int
    dataset: str = IMAGENET_1K
    dataset_classes: int = 1000
    architecture: str = "ResNet-50"
    linear: Accuracy | None = None
    semi1: Accuracy | None = None
    semi10: Accuracy | None = None
    knn: Accuracy | None = None
    hardware: str | None = None  # e.g. "16x V100"; None when not published
    pretrain_hours: float | None = None  # device-hours of pretraining; None when unknown
    hours_note: str = ""

    def accuracy(self, protocol: str) -> Accuracy | None:
        """(top-1, top-5) for a runs.csv protocol name, None when not published."""
        return {"linear": self.linear, "semi1": self.semi1, "semi10": self.semi10,
                "knn": self.knn}.get(protocol)


@dataclass(frozen=True)
class Cost:
    """A published pretraining cost of the baseline."""

    hours: float
    n_devices: int
    hardware: str
    duration: str
    source: str

    def describe(self) -> str:
        return (f"{self.hours:,.0f} {self.hardware}-hours ({self.n_devices} {self.hardware} x "
                f"{self.duration}, {self.source})")


BASELINE_COSTS = (
    Cost(2688.0, 16, "V100", "~7 days", f"the released code's README, <{BT_REPO}>"),
    Cost(3968.0, 32, "V100", "~124 h", f"the paper's text, {PAPER_SOURCE}, <{PAPER_URL}>"),
)
BASELINE_HOURS = min(cost.hours for cost in BASELINE_COSTS)  # ratios use the lower
BASELINE_HARDWARE = "V100"

FIRST_RELEASE = "first release of the reference code (f13c949, March 2021)"
SECOND_RELEASE = "second release of the reference code (046eec3, June 2021)"

PAPER = Published(
    "Barlow Twins paper, first release", PAPER_SOURCE, PAPER_URL,
    f"1000 ep, batch 2048, LARS, scale-loss 0.024; {FIRST_RELEASE}; linear probe lr 0.1 "
    "(protocol standard)", 1000,
    linear=(73.3, 91.0), semi1=(55.0, 79.2), semi10=(69.7, 89.3),
    hardware="16x V100 (README) / 32x V100 (paper)", pretrain_hours=BASELINE_HOURS,
    hours_note="released code's README; the paper's text: 3,968")
SECOND_RELEASE_MODEL = Published(
    "Barlow Twins, second release", "the second release's README", BT_REPO,
    f"1000 ep, batch 2048, LARS, lr 0.2 weights / 0.0048 biases; {SECOND_RELEASE}; linear "
    "probe lr 0.3 (protocol release2)", 1000,
    linear=(73.5, 91.0), hardware="16x V100 (README)", pretrain_hours=BASELINE_HOURS,
    hours_note="its README's ~7 days on 16 V100")
RELEASED_WEIGHTS = Published(
    "re-evaluation of the released weights", "barlowtwins GitHub issue 14",
    f"{BT_REPO}/issues/14",
    "the released 1000 ep ResNet-50 weights re-evaluated by a third party (its 73.27 "
    "matches the first release's model, 73.3; protocol as stated in the thread)", 1000,
    linear=(73.27, 91.09), semi1=(55.09, 79.89), semi10=(68.89, 88.97),
    hardware="16x V100 (README)", pretrain_hours=BASELINE_HOURS,
    hours_note="the baseline's pretraining")

_VISSL = ("VISSL model zoo", "https://github.com/facebookresearch/vissl/blob/main/MODEL_ZOO.md")
_MMSELFSUP = ("mmselfsup (now mmpretrain) Barlow Twins configs",
              "https://github.com/open-mmlab/mmpretrain/tree/main/configs/barlowtwins")
_SOLO = ("solo-learn README", "https://github.com/vturrisi/solo-learn")
_ISSUE7 = ("barlowtwins GitHub issue 7 (maintainers)", f"{BT_REPO}/issues/7")
_LIGHTLY = ("lightly ImageNet benchmarks",
            "https://docs.lightly.ai/self-supervised-learning/getting_started/benchmarks.html")

PUBLISHED: tuple[Published, ...] = (
    PAPER,
    SECOND_RELEASE_MODEL,
    RELEASED_WEIGHTS,
    Published("VISSL, 300 ep", *_VISSL, "300 ep, batch 2048, 32 GPUs", 300, linear=(70.75, None),
              hardware="32 GPUs"),
    Published("VISSL, 1000 ep", *_VISSL, "1000 ep, batch 2048, 32 GPUs", 1000,
              linear=(71.80, None), hardware="32 GPUs"),
    Published("mmselfsup, 300 ep", *_MMSELFSUP, "300 ep, 8 x 256 per GPU", 300,
              linear=(71.8, None), knn=(63.8, None), hardware="8x A100"),
    Published("solo-learn, 100 ep", *_SOLO, "100 ep, 4 GPUs x 64, projector 4096", 100,
              linear=(67.2, None), hardware="4 GPUs"),
    *(Published(f"barlowtwins issue 7, batch {batch}", *_ISSUE7, f"300 ep, batch {batch}", 300,
                linear=(top1, None))
      for batch, top1 in ((128, 69.7), (256, 70.7), (512, 71.4), (1024, 71.7), (2048, 71.4),
                          (4096, 70.7))),
    Published("lightly, 100 ep", *_LIGHTLY, "100 ep, batch 256", 100, linear=(62.9, None),
              hardware="2x RTX 4090", pretrain_hours=2 * 100 * 35 / 60,
              hours_note="derived: 100 ep x ~35 min/epoch x 2 GPUs"),
    Published("solo-learn ImageNet-100, online linear", *_SOLO, "400 ep", 400,
              dataset=IMAGENET_100, dataset_classes=100, architecture="ResNet-18",
              linear=(80.38, None)),
    Published("solo-learn ImageNet-100, offline linear", *_SOLO, "400 ep", 400,
              dataset=IMAGENET_100, dataset_classes=100, architecture="ResNet-18",
              linear=(80.16, None)),
)


def published_for(protocol: str) -> list[Published]:
    """The published entries with a number for ``protocol``, in PUBLISHED order."""
    return [entry for entry in PUBLISHED if entry.accuracy(protocol) is not None]


@dataclass(frozen=True)
class SupervisedCeiling:
    """A published supervised ImageNet-1k run: the ceiling a self-supervised row is read
    against (top-1 of the supervised classifier itself, not a linear probe)."""

    epochs: int
    top1: float
    minutes: float       # wall-clock minutes of the whole run
    n_devices: int
    hardware: str
    architecture: str = "ResNet-50"

    @property
    def device_hours(self) -> float:
        return self.n_devices * self.minutes / 60


FFCV_IMAGENET_SOURCE = ("ffcv-imagenet README table (supervised, 160 -> 192 px progressive "
                        "resolution, SGD, label smoothing 0.1, eval at 256 px with flip TTA)")
FFCV_IMAGENET_URL = "https://github.com/libffcv/ffcv-imagenet"
SUPERVISED_CEILINGS: tuple[SupervisedCeiling, ...] = (
    *(SupervisedCeiling(epochs, top1, minutes, 8, "A100")
      for epochs, top1, minutes in ((16, 73.8, 14.9), (24, 75.6, 21.7), (32, 76.6, 28.7),
                                    (40, 77.2, 35.6), (56, 78.0, 49.4), (88, 78.4, 77.2))),
    SupervisedCeiling(16, 66.9, 35.0, 1, "A100", "ResNet-18"),
    SupervisedCeiling(88, 72.4, 187.3, 1, "A100", "ResNet-18"),
)

