"""Batched augmentation of storm patches in physical units (rotation, translation, crop-and-resize, reflection).

Inputs are (N, 3, H, W) tensors, channels REFL (a scalar), U and V (the two components of one vector);
axis -2 runs south to north (y), axis -1 west to east (x). Every sample gets its own affine map; the whole
batch is warped by one `grid_sample` call, wherever the batch lives (CPU or GPU), without host syncs.

The wind is a vector, so it turns with the grid: a storm rotated by 30 degrees keeps its vorticity.
Mirroring west-east flips the sign of U, which also flips the sign of the vorticity (the storm spins the other
way). Zoom resamples the grid but leaves the wind speeds alone (they are physical values): a storm zoomed in
twice as large keeps its winds, so its horizontal gradients, and with them its apparent vorticity, halve.
That changes what the label measures, which is why zoom defaults to 0.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from tornado.errors import TornadoError, quoted

__all__ = ["AUGMENTATIONS", "AugmentConfig", "augment", "rotate", "transform"]

AUGMENTATIONS = ("preaugmented", "live")  # a training run's copies: from the prepared file, or made per batch


def _per_sample(value: Any, n: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A number or an (N,) tensor as an (N,) tensor on `like`'s device (a number is filled there: no copy)."""
    if not isinstance(value, torch.Tensor):
        return torch.full((n,), float(value), dtype=dtype, device=like.device)
    t = value.to(device=like.device, dtype=dtype)
    if t.ndim == 0:
        return t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"expected a number or a tensor of shape ({n},), got shape {tuple(t.shape)}")
    return t


def _affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """F.affine_grid(theta, (N, C, h, w), align_corners=False) as one (2N, 3) x (3, h*w) product.

    Same values; F.affine_grid's batched product is about ten times slower on CPU.
    """
    n = theta.shape[0]
    kw = dict(dtype=theta.dtype, device=theta.device)
    xs = torch.arange(w, **kw).mul_(2.0 / w).add_(1.0 / w - 1.0)
    ys = torch.arange(h, **kw).mul_(2.0 / h).add_(1.0 / h - 1.0)
    base = torch.stack([xs.expand(h, w), ys.view(h, 1).expand(h, w), torch.ones(h, w, **kw)]).view(3, h * w)
    return (theta.reshape(2 * n, 3) @ base).view(n, 2, h, w).permute(0, 2, 3, 1)


def transform(
    x: torch.Tensor,
    degrees: float | torch.Tensor = 0.0,
    shift: torch.Tensor | None = None,
    scale: float | torch.Tensor = 1.0,
    flip: bool | torch.Tensor = False,
    rotate_vectors: bool = True,
) -> torch.Tensor:
    """Warp every sample of `x` by its own affine map, in one `grid_sample` call.

    The content is first mirrored west-east where `flip`, then turned `degrees` counter-clockwise about the
    patch centre, then resampled from a window `scale` times the patch size (scale < 1 zooms in, as in
    Keras' zoom_range), then moved by `shift` (N, 2) = (east, north) fractions of the patch size.
    Outside the patch the border values are repeated (Keras' fill_mode='nearest').
    With `rotate_vectors`, (U, V) is mirrored and turned with the grid; zoom never rescales the wind.
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W), got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    # Half precision (float16, bfloat16) is warped in float32: a half-precision grid would misplace samples by
    # up to a tenth of a pixel, and CPU half kernels are slow. The result is cast back.
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    dt = torch.float64 if work.dtype == torch.float64 else torch.float32

    rad = torch.deg2rad(_per_sample(degrees, n, x, dt))
    cos, sin = torch.cos(rad), torch.sin(rad)
    sgn = 1.0 - 2.0 * _per_sample(flip, n, x, dt)  # -1 where mirrored
    c = _per_sample(scale, n, x, dt)

    # Output pixel p samples the input at q = c * Fl * R(-a) * (p - t), in centred pixel units; converted to
    # affine_grid's normalised units ([-1, 1] across each axis, align_corners=False).
    theta = torch.empty(n, 2, 3, dtype=dt, device=x.device)
    theta[:, 0, 0] = c * sgn * cos
    theta[:, 0, 1] = c * sgn * sin * (h / w)
    theta[:, 1, 0] = -c * sin * (w / h)
    theta[:, 1, 1] = c * cos
    if shift is None:
        theta[:, :, 2] = 0.0
    else:
        t = 2.0 * shift.to(device=x.device, dtype=dt).expand(n, 2)
        theta[:, :, 2] = -(theta[:, :, :2] @ t.unsqueeze(-1)).squeeze(-1)

    grid = _affine_grid(theta.to(work.dtype), h, w)
    out = F.grid_sample(work, grid, mode="bilinear", padding_mode="border", align_corners=False)

    if rotate_vectors:
        # (u, v) -> R(a) Fl (u, v): u' = s cos u - sin v,  v' = s sin u + cos v   (s = -1 where mirrored)
        m = torch.stack([sgn * cos, -sin, sgn * sin, cos], dim=1).view(n, 2, 2).to(out.dtype)
        uv = out[:, 1:3].reshape(n, 2, h * w)
        out[:, 1:3] = torch.bmm(m, uv).view(n, 2, h, w)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def rotate(x: torch.Tensor, degrees: float | torch.Tensor, rotate_vectors: bool = True) -> torch.Tensor:
    """Turn every patch counter-clockwise by `degrees` (a number or one angle per sample).

    With rotate_vectors=False only the image turns and the wind keeps its old direction (the paper's
    Keras rotation), which is not a rotation of the storm: a vortex turned by 90 degrees becomes a source.
    """
    return transform(x, degrees=degrees, rotate_vectors=rotate_vectors)


@dataclass(frozen=True)
class AugmentConfig:
    rotation: float = 5.0        # degrees, uniform in [-rotation, rotation]
    translate: float = 0.0       # fraction of the patch size, uniform in [-translate, translate] per axis
    zoom: float = 0.0            # window scale uniform in [1 - zoom, 1 + zoom]
    reflect: bool = False        # mirror west-east with probability 0.5
    rotate_vectors: bool = True  # turn (U, V) with the grid

    def __post_init__(self) -> None:
        ranges = {"rotation": (0.0, 360.0, True), "translate": (0.0, 1.0, True), "zoom": (0.0, 1.0, False)}
        for key, (lo, hi, hi_ok) in ranges.items():
            v = getattr(self, key)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or not (lo <= v and (v <= hi if hi_ok else v < hi)):
                bound = f"[{lo:g}, {hi:g}]" if hi_ok else f"[{lo:g}, {hi:g})"
                raise TornadoError(f"augment.{key}: must be a number in {bound}, got {quoted(v)}")
            object.__setattr__(self, key, float(v))  # 10 and 10.0 are one setting (and one content hash)
        for key in ("reflect", "rotate_vectors"):
            if not isinstance(getattr(self, key), bool):
                raise TornadoError(f"augment.{key}: must be true or false, got {quoted(getattr(self, key))}")

    @classmethod
    def from_cfg(cls, cfg: Any) -> "AugmentConfig":
        """From a mapping (dict or DictConfig) of these keys; unknown keys are an error (typos)."""
        if cfg is None:
            return cls()
        items = dict(cfg.items())
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(items) - known)
        if unknown:
            raise TornadoError(f"augment.{unknown[0]}: no such setting (known: {', '.join(sorted(known))})")
        return cls(**items)

    def to_dict(self) -> dict:
        return asdict(self)


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """A randomly augmented copy of the batch: parameters drawn per sample, one warp for the whole batch.

    Random numbers come from `generator` (seeded: the same batch gives the same result) and are drawn on
    the generator's device, then moved to the batch's.
    """
    n = x.shape[0]
    dev = generator.device if generator is not None else x.device
    # Always draw all five columns so the stream a seed produces does not depend on the settings.
    r = torch.rand(n, 5, generator=generator, device=dev).to(x.device, non_blocking=True)
    u = 2.0 * r[:, :4] - 1.0
    return transform(
        x,
        degrees=cfg.rotation * u[:, 0],
        shift=cfg.translate * u[:, 1:3],
        scale=1.0 + cfg.zoom * u[:, 3],
        flip=(r[:, 4] < 0.5) if cfg.reflect else False,
        rotate_vectors=cfg.rotate_vectors,
    )
