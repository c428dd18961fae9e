"""Slice-by-slice MVCT -> kV-like conversion of a whole volume, keeping its geometry.

Pipeline per batch of axial slices (axial = the voxel axis closest to head-foot, from the direction
matrix):

1. optional in-plane resampling to the model card's pixel spacing (bilinear, antialiased when
   shrinking), when the volume's spacing differs by more than ``spacing_tolerance``;
2. HU clipped to the card's window and mapped linearly to [-1, 1];
3. reflect-padding to the network stride, the generator, cropping back;
4. [-1, 1] mapped back to HU;
5. voxels outside the window: *residual carry-over*. The network only ever saw the window edge, so
   the part of a voxel's value beyond the edge is added back to the network's output, times the
   card's ``outside_window`` gain (1 by default). Bone keeps bone-like HU and air keeps air-like HU
   instead of being flattened to the window edges, and the mapping stays continuous at the edges;
6. when resampled, only the *change* the network made (output - input on the network grid) is
   resampled back and added to the original voxels, so the original resolution is kept wherever
   the network changed nothing.

The caller's array is never written to; a cancelled run raises :class:`EnhanceCancelled` and
returns nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any, Callable

import numpy as np

from .device import resolve_device
from .errors import EnhanceCancelled, InputError
from .modelcard import STRIDE, ModelCard
from .modelfile import LoadedModel, load_model
from .version import __version__
from .volume import Volume, validate_voxels

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
#: Default slices per batch. CPU time per slice does not drop with larger batches (measured: ~0.38 s
#: CPU per 256x256 slice at ngf 32 for batch 1 and 2 alike) while memory grows ~200 MB per 512x512
#: slice in flight, so CPUs get small batches; GPUs gain throughput from large ones.
DEFAULT_BATCH = {"cuda": 8, "mps": 4, "cpu": 2}
#: Body voxels outside the model's window above this fraction trigger a domain warning.
OUTSIDE_WINDOW_WARN_FRACTION = 0.05
BODY_THRESHOLD_HU = -400.0
#: A slice's body is "cut by the field of view" when body voxels (> BODY_THRESHOLD_HU) cover more than
#: this fraction of its border pixels: a couch or cables crossing the edge cover a few percent, a body
#: wider than the field (or a field cropped inside the body) a quarter or more.
FOV_BORDER_BODY_FRACTION = 0.10
#: ...and the warning is given when at least this fraction of the slices holding body are cut: a few
#: cut slices at one end (the shoulders of a head-and-neck scan) are common and affect only themselves.
FOV_CUT_SLICES_FRACTION = 0.25
#: Smallest in-plane size (pixels on the network grid) a slice is given to the network: the STRIDE-fold
#: downsampling must leave at least 2 x 2 latent pixels for the residual blocks' reflection padding and
#: instance norms (at 1 x 1 TorchScript fails with "Expected more than 1 spatial element").
MIN_NET_PIXELS = 2 * STRIDE

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


@dataclasses.dataclass
class EnhanceResult:
    volume: Volume
    warnings: list[str]
    seconds: float
    device: str
    parameters: dict[str, Any]


def check_domain(volume: Volume, card: ModelCard, resample: bool = True, spacing_tolerance: float = 0.05) -> list[str]:
    """Warnings (not errors) for inputs outside what the model was trained on."""
    notes: list[str] = []
    spacing = volume.inplane_spacing()
    target = card.pixel_spacing_mm
    off = [abs(s / t - 1.0) for s, t in zip(spacing, target)]
    if max(off) > spacing_tolerance and not resample:
        notes.append(f"pixel spacing {spacing[0]:.3g} x {spacing[1]:.3g} mm differs from the model's "
                     f"{target[0]:.3g} x {target[1]:.3g} mm and resampling is off: anatomy appears at a "
                     "scale the model was not trained on")
    if max(off) > 1.0:
        notes.append(f"pixel spacing {spacing[0]:.3g} x {spacing[1]:.3g} mm is far from the model's "
                     f"{target[0]:.3g} x {target[1]:.3g} mm; results may be unreliable")
    arr = volume.array
    body = arr > BODY_THRESHOLD_HU
    n_body = int(np.count_nonzero(body))
    if n_body:
        lo, hi = card.hu_window
        outside = int(np.count_nonzero(body & ((arr < lo) | (arr > hi))))
        if outside / n_body > OUTSIDE_WINDOW_WARN_FRACTION:
            notes.append(f"{100.0 * outside / n_body:.1f}% of body voxels lie outside the model's window "
                         f"[{lo:g}, {hi:g}] HU; their excess is carried over, not converted")
        notes += _field_of_view_notes(np.moveaxis(body, volume.axial_axis(), 0))
    else:
        notes.append(f"no voxel above {BODY_THRESHOLD_HU:g} HU: the image seems to contain no body")
    return notes


def _field_of_view_notes(body: np.ndarray) -> list[str]:
    """A warning when the body (bool, (slices, rows, cols)) reaches the image border in many slices."""
    n, h, w = body.shape
    edge = np.ones((h, w), dtype=bool)
    if h > 2 and w > 2:
        edge[1:-1, 1:-1] = False
    on_border = body[:, edge].mean(axis=1)
    has_body = body.any(axis=(1, 2))
    cut = int(np.count_nonzero(on_border > FOV_BORDER_BODY_FRACTION))
    if cut < FOV_CUT_SLICES_FRACTION * int(np.count_nonzero(has_body)):
        return []
    return [f"the body reaches the image border in {cut} of {int(np.count_nonzero(has_body))} slices (up to "
            f"{100.0 * float(on_border.max()):.0f}% of the border): it fills or is cut by the field of view (or "
            "the area outside the reconstruction circle is not air); the model was trained with air around "
            "the body, so expect errors near the border"]


def _resolve_precision(precision: str, dev: Any) -> Any:
    import torch

    if precision not in PRECISIONS:
        raise InputError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}")
    if dev.type != "cuda":
        if precision in ("fp16", "bf16"):
            raise InputError(f"precision '{precision}' needs a CUDA device; this run uses {dev.type}")
        return None
    # fp16 keeps ~0.5 HU resolution over a 2000 HU window where bf16 would keep ~4 HU; instance norm
    # runs in fp32 under autocast either way.
    return {"auto": torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[precision]


def _grid_size(n: int, spacing: float, target: float) -> int:
    return max(1, int(round(n * spacing / target)))


def _min_size_padding(n: int, spacing: float, target: float, resampled: bool) -> int:
    """Pixels to add to an in-plane size ``n`` so that its network grid has MIN_NET_PIXELS (0 if it has)."""
    size = (lambda m: _grid_size(m, spacing, target)) if resampled else (lambda m: m)
    if size(n) >= MIN_NET_PIXELS:
        return 0
    need = max(n, math.ceil((MIN_NET_PIXELS - 0.5) * target / spacing)) if resampled else MIN_NET_PIXELS
    while size(need) < MIN_NET_PIXELS:
        need += 1
    return need - n


class _SliceConverter:
    """Converts (B, H, W) float32 HU slices on one device; holds the per-run constants."""

    def __init__(self, module: Any, card: ModelCard, dev: Any, amp_dtype: Any, net_hw: tuple[int, int] | None):
        self.module, self.card, self.dev, self.amp_dtype, self.net_hw = module, card, dev, amp_dtype, net_hw
        self.a, self.b = card.hu_to_net_scale()
        self.lo, self.hi = card.hu_window
        self.below_gain = float(card.outside_window.get("below_gain", 1.0))
        self.above_gain = float(card.outside_window.get("above_gain", 1.0))
        self.calibration = card.anchor()
        self.bound = float(card.max_change_hu) if card.bounded else None

    def anchor(self, x: Any) -> Any:
        """What the network changes: the calibrated MVCT (bounded models), else the MVCT itself."""
        return self.calibration.apply_torch(x) if self.calibration is not None else x

    @staticmethod
    def _resize(x: Any, size: tuple[int, int]) -> Any:
        import torch.nn.functional as F

        shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrinking)

    @staticmethod
    def _pad(x: Any) -> Any:
        import torch.nn.functional as F

        h, w = x.shape[-2:]
        ph, pw = (-h) % STRIDE, (-w) % STRIDE
        if ph == 0 and pw == 0:
            return x
        mode = "reflect" if h > ph and w > pw else "replicate"  # reflect needs pad < size
        return F.pad(x, (0, pw, 0, ph), mode=mode)

    def __call__(self, slices_hu: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(slices_hu).to(self.dev).unsqueeze(1)  # (B, 1, H, W) HU
        h, w = x.shape[-2:]
        x_net_grid = self._resize(x, self.net_hw) if self.net_hw else x
        anchor = self.anchor(x_net_grid)
        clipped = anchor.clamp(self.lo, self.hi)
        net_in = self._pad(clipped * self.a + self.b)
        if self.amp_dtype is not None:
            with torch.autocast(device_type=self.dev.type, dtype=self.amp_dtype):
                y = self.module(net_in)
        else:
            y = self.module(net_in)
        gh, gw = clipped.shape[-2:]
        y = y[..., :gh, :gw].float()
        if self.bound is not None:
            # The bound is the engine's, not the weights': t is clamped to [-1, 1] whatever the file holds,
            # and resampling (convex weights) cannot leave [-bound, bound] either.
            change = self.bound * y.clamp(-1.0, 1.0)
        else:
            # Written as input + change so that a generator returning its input changes nothing, bit for
            # bit; algebraically it is y_HU + gain * (x - clip(x)).
            excess = anchor - clipped
            change = (y - net_in[..., :gh, :gw]) / self.a
            change = change + (self.below_gain - 1.0) * excess.clamp(max=0.0) + (self.above_gain - 1.0) * excess.clamp(min=0.0)
        if self.net_hw:
            change = self._resize(change, (h, w))
            if self.bound is not None:
                change = change.clamp(-self.bound, self.bound)
        out = (self.anchor(x) if self.net_hw else anchor) + change
        return out[:, 0].cpu().numpy()


def _is_oom(exc: BaseException) -> bool:
    import torch

    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", RuntimeError)
    return isinstance(exc, oom_type) or "out of memory" in str(exc).lower()


def enhance(volume: Volume, model: LoadedModel | str | os.PathLike, *, device: Any = "auto", batch_size: int | None = None,
            precision: str = "auto", resample: bool = True, spacing_tolerance: float = 0.05,
            progress: ProgressFn | None = None, should_cancel: CancelFn | None = None) -> EnhanceResult:
    """Convert an MVCT volume (HU) to a kV-like volume (HU) with the same geometry.

    ``model`` is a :class:`LoadedModel` or a model file path. ``batch_size`` None picks
    :data:`DEFAULT_BATCH` for the device. ``progress(done, total)`` is called
    after each batch (and once with 0 at the start); ``should_cancel()`` is checked before each
    batch and a True makes the run raise :class:`EnhanceCancelled`. On CUDA out-of-memory the batch
    is halved, then the run falls back to the CPU; both are reported in ``warnings``.
    """
    import torch

    if not isinstance(volume, Volume):
        raise InputError(f"enhance() needs a Volume, got {type(volume).__name__}")
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
    if not spacing_tolerance >= 0:
        raise InputError(f"spacing tolerance must be >= 0, got {spacing_tolerance!r}")
    validate_voxels(volume.array, "input volume")
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    card = loaded.card
    dev = resolve_device(device)
    amp_dtype = _resolve_precision(precision, dev)
    t0 = time.perf_counter()

    axis = volume.axial_axis()
    slices = np.moveaxis(volume.array, axis, 0)  # a view: read only, never written
    n, h, w = slices.shape
    spacing = volume.inplane_spacing(axis)
    target = card.pixel_spacing_mm
    resampled = resample and any(abs(s / t - 1.0) > spacing_tolerance for s, t in zip(spacing, target))
    # Slices too small for the network are padded with their edge values and cropped back, rather than
    # refused: the stride padding already extends the borders this way, the padding changes no voxel's
    # own conversion (the identity generator still returns the input exactly), and every image that can
    # be read stays convertible. A field this small holds no anatomy the model knows: the report says so.
    pad_h, pad_w = (_min_size_padding(m, s, t, resampled) for m, s, t in zip((h, w), spacing, target))
    top, left = pad_h // 2, pad_w // 2
    net_hw = (_grid_size(h + pad_h, spacing[0], target[0]), _grid_size(w + pad_w, spacing[1], target[1])) \
        if resampled else None
    notes = check_domain(volume, card, resample, spacing_tolerance)
    if pad_h or pad_w:
        notes.append(f"the image is only {h} x {w} pixels in-plane ({h * spacing[0]:.3g} x {w * spacing[1]:.3g} mm): padded to {h + pad_h} x {w + pad_w} (edge "
                     f"values; the network needs {MIN_NET_PIXELS} x {MIN_NET_PIXELS} on its grid) and cropped back; "
                     "a field this small holds no anatomy the model knows, so the result is not meaningful")

    module = loaded.module.to(dev)
    converter = _SliceConverter(module, card, dev, amp_dtype, net_hw)
    out = np.empty((n, h, w), dtype=np.float32)
    bs = batch_size or DEFAULT_BATCH.get(dev.type, 2)
    if progress:
        progress(0, n)
    start = 0
    with torch.inference_mode():
        while start < n:
            if should_cancel is not None and should_cancel():
                raise EnhanceCancelled(f"conversion cancelled after {start} of {n} slices; no output was produced")
            stop = min(n, start + bs)
            batch = np.array(slices[start:stop], dtype=np.float32, copy=True)
            if pad_h or pad_w:
                batch = np.pad(batch, ((0, 0), (top, pad_h - top), (left, pad_w - left)), mode="edge")
            try:
                out[start:stop] = converter(batch)[:, top:top + h, left:left + w]
            except Exception as exc:
                if dev.type != "cuda" or not _is_oom(exc):
                    raise
                torch.cuda.empty_cache()
                if bs > 1:
                    bs = max(1, bs // 2)
                    notes.append(f"CUDA out of memory: batch size reduced to {bs}")
                else:
                    dev = torch.device("cpu")
                    converter = _SliceConverter(loaded.module.to(dev), card, dev, None, net_hw)
                    notes.append("CUDA out of memory even with batch size 1: continued on the CPU")
                log.warning(notes[-1])
                continue
            start = stop
            if progress:
                progress(start, n)

    result = np.ascontiguousarray(np.moveaxis(out, 0, axis))
    seconds = time.perf_counter() - t0
    params = {
        "engine_version": __version__,
        "model": {"name": card.name, "version": card.version, "sha256": loaded.sha256},
        "device": str(dev), "batch_size": bs, "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        "resample": bool(resample), "resampled": bool(resampled), "spacing_tolerance": spacing_tolerance,
        "network_grid": list(net_hw) if net_hw else [h + pad_h, w + pad_w], "axial_axis": axis, "slices": n,
    }
    if pad_h or pad_w:
        params["min_size_padding"] = [pad_h, pad_w]
    for note in notes:
        log.warning(note)
    return EnhanceResult(volume.with_array(result, enhanced_by=card.name), notes, seconds, str(dev), params)
