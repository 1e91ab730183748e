"""runs.csv rows grouped into configurations and pooled over seeds.

One configuration is (recipe, data set, backbone, epochs, device type, device count, code
revision); the results tables (reporting/markdown.py), the plot (reporting/plots.py) and the
sweep frontier (reporting/frontier.py) all read rows through these pieces.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import pandas as pd

from ffcv_bt.config import protocol_values

# The kNN settings the tables name, read from the standard protocol (stated once there).
KNN = protocol_values("standard")["knn"]
PROTOCOL_NAMES = {"knn": f"kNN (k={KNN['k']})", "logreg": "logistic regression",
                  "linear": "linear probe", "semi1": "1% labels", "semi10": "10% labels"}
BACKBONE_NAMES = {"pretrained": "pretrained", "supervised": "supervised (ceiling, same budget)",
                  "external": "external (published checkpoint)",
                  "random": "random init (control)", "pixels": "raw pixels (floor)"}
_BACKBONE_ORDER = {name: rank for rank, name in enumerate(BACKBONE_NAMES)}


def is_imagenet_1k(classes: int | None, train_images: int | None) -> bool:
    """The full ImageNet-1k train set: 1000 classes and more than 1.2M train images."""
    return classes == 1000 and train_images is not None and train_images > 1_200_000


def device_kind(device: str) -> str:
    """The device type without details: "cpu (Intel Xeon ...)" -> "cpu"."""
    return device.split(" (")[0].strip()


def code_revision(git_sha: str | None) -> str:
    """The short commit of a row ("-dirty" dropped: a run that rewrote results/ is the same
    code). Rows of one recipe from different revisions are different configurations."""
    return str(git_sha or "").removesuffix("-dirty")[:7]


@dataclass
class Stat:
    """Mean, sample std (ddof=1; None for one value) and count of some values."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: list[float]) -> "Stat":
        return cls(statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None,
                   len(values))


@dataclass
class Configuration:
    """The runs of one configuration: rows per protocol, pooled over seeds."""

    recipe: str
    dataset: str
    backbone: str
    epochs: int
    device_kind: str
    n_devices: int
    dataset_classes: int | None
    dataset_train_images: int | None
    revision: str = ""     # the code's git commit (short, "-dirty" dropped)
    show_revision: bool = False  # the recipe has rows from several revisions
    rows: dict[str, list[dict]] = field(default_factory=dict)  # protocol -> rows

    @property
    def imagenet_1k(self) -> bool:
        return is_imagenet_1k(self.dataset_classes, self.dataset_train_images)

    def all_rows(self) -> list[dict]:
        return [row for rows in self.rows.values() for row in rows]

    def values(self, protocol: str, key: str) -> list[float]:
        return [r[key] for r in self.rows.get(protocol, []) if r[key] is not None]

    def run_ids(self) -> list[str]:
        return list(dict.fromkeys(row["run_id"] for row in self.all_rows()))

    def seeds(self) -> str:
        seeds = dict.fromkeys(row["seed"] for row in self.all_rows())
        return ", ".join(str(s) for s in seeds)

    def hours_per_run(self) -> tuple[float, float]:
        """Mean over runs of (pretraining hours, pretraining + these evaluations' hours)."""
        pretrain, total = {}, {}
        for row in self.all_rows():
            pretrain[row["run_id"]] = row["pretrain_gpu_hours"]
            total[row["run_id"]] = total.get(row["run_id"], 0.0) + row["eval_gpu_hours"]
        runs = list(pretrain)
        return (statistics.mean(pretrain[r] for r in runs),
                statistics.mean(pretrain[r] + total[r] for r in runs))

    def label(self) -> str:
        return (f"{self.recipe} · {self.dataset} · {BACKBONE_NAMES[self.backbone]} · "
                f"{self.epochs} ep · {self.n_devices}x {self.device_kind}")


def configurations(runs: pd.DataFrame, protocols: tuple[str, ...]) -> list[Configuration]:
    """Rows of ``protocols`` grouped by configuration; per recipe and data set the
    pretrained rows come first, then external, random-init and raw-pixel rows."""
    groups: dict[tuple, Configuration] = {}
    order: dict[tuple, int] = {}
    revisions: dict[str, set[str]] = {}
    for row in runs[runs["protocol"].isin(protocols)].to_dict("records"):
        revision = code_revision(row.get("git_sha"))
        key = (row["recipe"], row["dataset"], row["backbone"], row["epochs"],
               device_kind(row["device"]), row["n_devices"], revision)
        if key not in groups:
            groups[key] = Configuration(*key[:6], row["dataset_classes"], row["dataset_train_images"],
                                        revision)
        groups[key].rows.setdefault(row["protocol"], []).append(row)
        order.setdefault(key[:2], len(order))
        revisions.setdefault(row["recipe"], set()).add(revision)
    for config in groups.values():
        config.show_revision = len(revisions[config.recipe]) > 1
    ranked = sorted(groups, key=lambda key: (order[key[:2]], _BACKBONE_ORDER[key[2]]))  # stable
    return [groups[key] for key in ranked]
