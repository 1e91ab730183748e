"""The reference for the pixel floors: every image of an ImageFolder-style split read with
Pillow and normalised with the ImageNet mean and std, as the loaders do."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406]) * 255
STD = np.array([0.229, 0.224, 0.225]) * 255


def folder_pixels(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixels (N, 3*H*W) and labels of every image under ``folder``/<class>/."""
    features, labels = [], []
    for label, class_dir in enumerate(sorted(p for p in folder.iterdir() if p.is_dir())):
        for path in sorted(class_dir.iterdir()):
            rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
            features.append(((rgb - MEAN) / STD).transpose(2, 0, 1).ravel())
            labels.append(label)
    return np.stack(features), np.array(labels)
