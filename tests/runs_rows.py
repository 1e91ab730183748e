"""Hand-made runs.csv rows (shared by the reporting tests)."""
from __future__ import annotations

A100 = "NVIDIA A100-SXM4-80GB"
IMAGENET = "imagenet-1k (1000 classes, 1,281,167 train)"

def make_row(**overrides) -> dict:
    row = {"run_id": "bt100", "recipe": "100ep", "dataset": IMAGENET, "dataset_classes": 1000,
           "dataset_train_images": 1281167, "seed": 0, "protocol": "linear",
           "backbone": "pretrained", "epochs": 100, "top1": 68.123, "top5": 88.456,
           "best_top1": 68.5, "pretrain_gpu_hours": 40.5, "eval_gpu_hours": 3.2, "device": A100,
           "n_devices": 8, "git_sha": "0123abcd", "finished_at": "2025-01-02T03:04:05",
           "run_dir": "results/runs/bt100"}
    row.update(overrides)
    # epochs at max resolution: the epochs of a fixed-resolution run, 0 without pretraining
    row.setdefault("pretrain_epoch_equivalents",
                   float(row["epochs"]) if row["backbone"] == "pretrained" else 0.0)
    return row
