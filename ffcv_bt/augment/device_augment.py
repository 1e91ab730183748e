"""The per-view augmentations as batched torch ops on the training device (``aug.device: gpu``).

On a node with few CPU cores per GPU, the numba ops in the loader workers (colour jitter
above all) can starve the GPU. With ``aug.device: gpu`` the workers only decode, crop and
flip, and :func:`augment_views` applies colour jitter, grayscale, Gaussian blur and
solarize to whole uint8 batches on the device, with the decisions the loader drew for
each sample (:class:`ffcv_bt.augment.view_params.ViewParamsDecoder`, the same counter-based
draws as the numba path). The arithmetic is Pillow's, as in the numba ops
(:mod:`ffcv_bt.augment.color_jitter`, :mod:`ffcv_bt.augment.blur`): float32 blends truncated to
uint8, the 8-bit HSV round trip in Pillow's own float32/double steps, the extended box blur
in 24-bit fixed point; each op equals PIL and the two loader paths agree to the level
(tests/augment/test_device_augment.py).

Flip is left to the loader (it commutes with every op here), and the order is the
reference's: jitter (its four parts in the sample's random order), grayscale, blur, solarize.
"""
from __future__ import annotations

import numpy as np
import torch

from ffcv_bt.augment.color_jitter import BRIGHTNESS, CONTRAST, HUE, SATURATION
from ffcv_bt.augment.view_params import BLUR, GRAY, JITTER, PARAMS_PER_VIEW, SOLARIZE

BOX_PASSES = 3  # Pillow's GaussianBlur: 3 box passes per direction


# ----- colour -----------------------------------------------------------------------------
def pil_luma(images: torch.Tensor) -> torch.Tensor:
    """Pillow's "L" of (N, 3, H, W) int32 images: ``(19595 R + 38470 G + 7471 B + 2**15) >> 16``."""
    r, g, b = images[:, 0], images[:, 1], images[:, 2]
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


def blend(degenerate: torch.Tensor, images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Pillow's ``Image.blend``: ``degenerate + factor * (image - degenerate)`` in float32,
    clipped to [0, 255] and truncated; ``factor`` is per sample (N,)."""
    alpha = factor.to(torch.float32).view(-1, *([1] * (images.dim() - 1)))
    t = degenerate.to(torch.float32) + alpha * (images - degenerate).to(torch.float32)
    return t.clamp_(0.0, 255.0).to(torch.int32)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Brightness``: blend with black."""
    return blend(torch.zeros_like(images), images, factor)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Contrast``: blend with the mean "L" level, ``int(mean + 0.5)``."""
    luma = pil_luma(images)
    mean = luma.flatten(1).sum(1, dtype=torch.int64).to(torch.float64) / luma[0].numel()
    degenerate = torch.floor(mean + 0.5).to(torch.int32).view(-1, 1, 1, 1)
    return blend(degenerate, images, factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Color``: blend every pixel with its own "L" level."""
    return blend(pil_luma(images).unsqueeze(1), images, factor)


def _clamp_level(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 255)


def rotate_hue(images: torch.Tensor, hue_factor: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB -> 8-bit HSV, ``H += int(hue_factor * 255)`` (mod 256), HSV -> RGB.

    The float32 / double steps of Pillow's Convert.c (``rgb2hsv_row``, ``hsv2rgb``) as
    written there (the numba kernel uses a float32-only form checked equal on every colour).
    """
    f32, f64 = torch.float32, torch.float64
    r, g, b = images[:, 0], images[:, 1], images[:, 2]
    maxc = torch.maximum(r, torch.maximum(g, b))
    minc = torch.minimum(r, torch.minimum(g, b))
    chroma = (maxc - minc).clamp(min=1).to(f32)
    s = chroma / maxc.clamp(min=1).to(f32)
    rc = (maxc - r).to(f32) / chroma
    gc = (maxc - g).to(f32) / chroma
    bc = (maxc - b).to(f32) / chroma
    h_red = bc - gc
    h_green = (2.0 + rc.to(f64) - bc.to(f64)).to(f32)
    h_blue = (4.0 + gc.to(f64) - rc.to(f64)).to(f32)
    h = torch.where(r == maxc, h_red, torch.where(g == maxc, h_green, h_blue))
    turns = h.to(f64) / 6.0 + 1.0
    h = (turns - torch.floor(turns)).to(f32)
    gray = maxc == minc
    zero = torch.zeros_like(maxc)
    hue = torch.where(gray, zero, _clamp_level((h.to(f64) * 255.0).to(torch.int32)))
    sat = torch.where(gray, zero, _clamp_level((s.to(f64) * 255.0).to(torch.int32)))
    shift = torch.trunc(hue_factor.to(f64) * 255.0).to(torch.int32).view(-1, 1, 1)
    hue = (hue + shift) & 255
    scaled = hue.to(f64) * 6.0 / 255.0
    sector = torch.floor(scaled)
    f = (scaled - sector).to(f32)
    sector = sector.to(torch.int32) % 6
    fs = (sat.to(f64) / 255.0).to(f32)
    v = maxc.to(f64)

    def level(x: torch.Tensor) -> torch.Tensor:
        return _clamp_level(torch.floor(x + 0.5).to(torch.int32))

    lo = level(v * (1.0 - fs.to(f64)))
    falling = level(v * (1.0 - (fs * f).to(f64)))
    rising = level(v * (1.0 - fs.to(f64) * (1.0 - f.to(f64))))

    def pick(*by_sector: torch.Tensor) -> torch.Tensor:
        out = by_sector[5]
        for k in range(4, -1, -1):
            out = torch.where(sector == k, by_sector[k], out)
        return torch.where(sat == 0, maxc, out)

    red = pick(maxc, falling, lo, lo, rising, maxc)
    green = pick(rising, maxc, maxc, falling, lo, lo)
    blue = pick(lo, lo, rising, maxc, maxc, falling)
    return torch.stack((red, green, blue), dim=1)


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """Pillow's "L" on all three channels."""
    return pil_luma(images).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def solarize(images: torch.Tensor, threshold: int) -> torch.Tensor:
    """Levels at or above ``threshold`` become ``255 - level`` (``ImageOps.solarize``)."""
    return torch.where(images >= threshold, 255 - images, images)


# ----- blur -------------------------------------------------------------------------------
def pil_box_weights(sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sigma (integer radius, inner weight, edge weight) of Pillow's extended box blur.

    The float32 arithmetic of :func:`ffcv_bt.augment.blur.pil_box_radius` and
    :func:`ffcv_bt.augment.blur.box_weights` (Pillow's BoxBlur.c), vectorised with numpy.
    """
    one, two = np.float32(1.0), np.float32(2.0)
    s = np.asarray(sigma, dtype=np.float32)
    sigma2 = s * s / np.float32(BOX_PASSES)
    length = np.sqrt(12.0 * sigma2.astype(np.float64) + 1.0).astype(np.float32)
    whole = np.floor((length.astype(np.float64) - 1.0) / 2.0).astype(np.float32)
    part = (two * whole + one) * (whole * (whole + one) - np.float32(3.0) * sigma2)
    part = part / (np.float32(6.0) * (sigma2 - (whole + one) * (whole + one)))
    radius = (whole + part).astype(np.float32)
    integer = radius.astype(np.int64)
    inner = (np.float32(16777216.0) / (radius * two + one)).astype(np.uint32).astype(np.int64)
    edge = (16777216 - (2 * integer + 1) * inner) // 2
    return integer, inner, edge


def _box_pass(images: torch.Tensor, dim: int, radius: int, inner: torch.Tensor,
              edge: torch.Tensor) -> torch.Tensor:
    """One box pass along ``dim`` with edge pixels repeated; Pillow's 24-bit fixed point."""
    size = images.shape[dim]
    pad = radius + 1
    index = torch.arange(-pad, size + pad, device=images.device).clamp_(0, size - 1)
    padded = images.index_select(dim, index).to(torch.int64)
    sums = torch.cumsum(padded, dim)
    sums = torch.cat((torch.zeros_like(sums.narrow(dim, 0, 1)), sums), dim)
    # window x covers padded[x + 1 .. x + 2 r + 1]; its two edge pixels padded[x], padded[x + 2 pad]
    total = sums.narrow(dim, 2 * radius + 2, size) - sums.narrow(dim, 1, size)
    edges = padded.narrow(dim, 0, size) + padded.narrow(dim, 2 * pad, size)
    return (inner * total + edge * edges + (1 << 23)) >> 24


def gaussian_blur(images: torch.Tensor, sigma: np.ndarray) -> torch.Tensor:
    """Pillow's ``GaussianBlur(sigma)`` of (N, 3, H, W) int32 images, one sigma per sample:
    3 horizontal then 3 vertical extended box passes, rounded to levels after each.

    The per-sample indices and weights travel to the device in one copy (pinned and
    asynchronous on CUDA), grouped by radius; each radius then slices its group there.
    """
    radius, inner, edge = pil_box_weights(sigma)
    order = np.argsort(radius, kind="stable")
    radii, starts = np.unique(radius[order], return_index=True)
    host = torch.from_numpy(np.stack([order, inner[order], edge[order]]).astype(np.int64))
    if images.is_cuda:
        host = host.pin_memory()
    table = host.to(images.device, non_blocking=True)
    ends = list(starts[1:]) + [len(order)]
    out = images.clone()
    shape = (-1, 1, 1, 1)
    for r, start, end in zip(radii, starts, ends):
        chosen = table[0, start:end]
        w_inner = table[1, start:end].view(shape)
        w_edge = table[2, start:end].view(shape)
        x = images.index_select(0, chosen)
        for dim in (3, 3, 3, 2, 2, 2)[:2 * BOX_PASSES]:
            x = _box_pass(x, dim, int(r), w_inner, w_edge)
        out.index_copy_(0, chosen, x.to(torch.int32))
    return out


# ----- the whole view -----------------------------------------------------------------------
def _apply_to(images: torch.Tensor, mask: np.ndarray, fn, *args) -> torch.Tensor:
    """``images`` with ``fn(images[mask], *args[mask])`` in the masked samples.

    The mask lives on the host (the decisions are known there), so choosing the samples
    never waits for the device.
    """
    if not mask.any():
        return images
    chosen = torch.from_numpy(np.flatnonzero(mask)).to(images.device, non_blocking=True)
    picked = [a.index_select(0, chosen) if isinstance(a, torch.Tensor) else a for a in args]
    return images.index_copy(0, chosen, fn(images.index_select(0, chosen), *picked))


def augment_views(images: torch.Tensor, params: torch.Tensor, solarize_threshold: int) -> torch.Tensor:
    """Jitter, grayscale, blur and solarize a batch of one view, as the loader decided.

    ``images``: (N, H, W, 3) uint8 on the device; ``params``: (N, PARAMS_PER_VIEW) float64
    decision rows on the host (layout in :mod:`ffcv_bt.augment.view_params`). Returns
    (N, H, W, 3) uint8 on the device.
    """
    if images.dim() != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8 images, got {tuple(images.shape)} {images.dtype}")
    if tuple(params.shape) != (images.shape[0], PARAMS_PER_VIEW):
        raise ValueError(f"expected ({images.shape[0]}, {PARAMS_PER_VIEW}) decision rows, got {tuple(params.shape)}")
    host = params.cpu().numpy()
    jitter = host[:, JITTER]
    factors = torch.from_numpy(np.ascontiguousarray(jitter[:, 1:5])).to(images.device, non_blocking=True)
    x = images.permute(0, 3, 1, 2).to(torch.int32)
    parts = {BRIGHTNESS: adjust_brightness, CONTRAST: adjust_contrast,
             SATURATION: adjust_saturation, HUE: rotate_hue}
    for position in range(4):
        for part, fn in parts.items():
            factor = jitter[:, 1 + part]
            active = (jitter[:, 0] != 0) & (jitter[:, 5 + position] == part) & ~np.isnan(factor)
            if part != HUE:
                active &= factor != 1.0  # blending with factor 1 is the identity
            x = _apply_to(x, active, fn, factors[:, part])
    x = _apply_to(x, host[:, GRAY] != 0, to_grayscale)
    blurred = host[:, BLUR.start] != 0
    if blurred.any():
        sigma = host[blurred, BLUR.start + 1]
        x = _apply_to(x, blurred, lambda chosen: gaussian_blur(chosen, sigma))
    x = _apply_to(x, host[:, SOLARIZE] != 0, solarize, solarize_threshold)
    return x.to(torch.uint8).permute(0, 2, 3, 1)
