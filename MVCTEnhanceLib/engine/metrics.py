"""Image-quality metrics: voxel maps (DIG, NSelfSSIM), an automatic body mask, summaries, and the
full-reference MAE/PSNR/SSIM used where a ground truth exists.

No-reference metrics of the method (Ozaki, Kaji et al., Med. Phys. 49(6), 2022;
and S. Ozaki's ISCO 2023 talk):

* **DIG** (difference-image gradient) = ``|grad_inplane(original - converted)|^2`` per voxel, in
  HU^2/mm^2. A conversion may shift HU smoothly; edges in the difference image mean anatomy was
  added, removed or moved. Lower is better.
* **NSelfSSIM** = local SSIM between an image and the same image plus seeded Gaussian noise. A noisy
  image barely changes when more noise is added (high value), a clean one changes a lot (low value).

Maps are computed with torch (CPU or GPU) in chunks of slices along the axial axis, so a
512x512x200 volume needs only a few hundred MB; torch is imported inside the functions because the
Slicer module imports this module at start-up.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np
from scipy import ndimage

from .calibration import Calibration
from .device import resolve_device
from .errors import EnhanceCancelled, InputError
from .settings import BODY_THRESHOLD_HU, NSELFSSIM_NOISE_SD, NSELFSSIM_WINDOW, ShouldCancel, StepProgress
from .volume import Volume


#: SSIM constants of Wang et al. (2004) and scipy's Gaussian truncation, as scikit-image uses them.
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_TRUNCATE = 3.5
#: SynthRAD convention for full-reference metrics: clip to this HU range, its width is the data range.
SYNTHRAD_RANGE = (-1024.0, 3000.0)


@dataclasses.dataclass(frozen=True)
class MetricInfo:
    """What a reader needs to know of a metric: its name in tables, unit and better direction."""

    name: str
    label: str
    unit: str
    better: str                    # "lower" or "higher"
    needs_reference: bool = False  # True: needs a ground truth on the image's grid
    note: str = ""                 # said beside the direction where "better" needs a word

    @property
    def alternative(self) -> str:
        """The one-sided alternative of a test that a method is better ("less" or "greater")."""
        return "less" if self.better == "lower" else "greater"

    @property
    def better_text(self) -> str:
        return self.note or self.better


#: The registry: every metric the engine and the study report, in reading order.
METRICS: dict[str, MetricInfo] = {m.name: m for m in (
    MetricInfo("nselfssim", "NSelfSSIM", "", "lower", note="lower = less noise (kV CT is the target)"),
    MetricInfo("dig", "DIG", "HU²/mm²", "lower"),
    MetricInfo("mae", "MAE", "HU", "lower", needs_reference=True),
    MetricInfo("psnr", "PSNR", "dB", "higher", needs_reference=True),
    MetricInfo("ssim", "SSIM", "", "higher", needs_reference=True),
    MetricInfo("tissue_change", "Tissue change", "cm³", "lower",
               note="lower = fewer voxels changed tissue class (air, lung, fat, soft tissue, bone)"),
)}
#: Body mask: in-plane opening radius (mm) that removes noise specks and thin couch/cable bridges.
BODY_OPENING_MM = 2.0
_MAX_OPENING_PX = 5  # bounds the cost on very fine pixel grids


# --------------------------------------------------------------------------------------------------
# Chunked slice processing
# --------------------------------------------------------------------------------------------------

def _check_volume(volume: Any, what: str) -> Volume:
    if not isinstance(volume, Volume):
        raise InputError(f"{what} must be a Volume, got {type(volume).__name__}")
    if not np.isfinite(volume.array).all():
        raise InputError(f"{what} has NaN or infinite voxels; fix or mask them first")
    return volume


def _check_chunk(chunk_slices: Any) -> int:
    if isinstance(chunk_slices, bool) or not isinstance(chunk_slices, (int, np.integer)) or chunk_slices < 1:
        raise InputError(f"chunk_slices must be a positive integer, got {chunk_slices!r}")
    return int(chunk_slices)


def _map_slices(arrays: list[np.ndarray], axis: int, fn: Callable[..., np.ndarray], chunk_slices: int,
                progress: StepProgress | None, should_cancel: ShouldCancel | None, what: str) -> np.ndarray:
    """Apply ``fn`` to chunks of slices (N, rows, cols) taken along ``axis``; returns a float32 map.

    The cancel check runs before every chunk and progress(done, total) after it, so a cancelled run
    raises :class:`EnhanceCancelled` and its partial map is dropped.
    """
    views = [np.moveaxis(a, axis, 0) for a in arrays]
    total = views[0].shape[0]
    out = np.empty(arrays[0].shape, np.float32)
    out_view = np.moveaxis(out, axis, 0)  # writes land in ``out`` whatever the axis
    for start in range(0, total, chunk_slices):
        if should_cancel is not None and should_cancel():
            raise EnhanceCancelled(f"{what} cancelled after {start} of {total} slices")
        stop = min(total, start + chunk_slices)
        out_view[start:stop] = fn(*[np.ascontiguousarray(v[start:stop]) for v in views])
        if progress is not None:
            progress(stop, total)
    return out


def _offset_progress(progress: StepProgress | None, offset: int, total: int) -> StepProgress | None:
    """Progress of one step of a multi-step job, reported on the job's overall scale."""
    if progress is None:
        return None
    return lambda done, _n: progress(offset + done, total)


# --------------------------------------------------------------------------------------------------
# SSIM map (torch), equal to scikit-image's structural_similarity(gaussian_weights=True,
# use_sample_covariance=False) map
# --------------------------------------------------------------------------------------------------

def _symmetric_index(n: int, radius: int) -> np.ndarray:
    """Source indices of a length-n axis padded by ``radius`` with symmetric reflection.

    This is scipy.ndimage's 'reflect' (d c b a | a b c d | d c b a: the edge sample is repeated),
    which scikit-image uses; torch's 'reflect' pad omits the edge sample and would differ at the
    borders. Index arithmetic with period 2n also covers images smaller than the kernel.
    """
    i = np.arange(-radius, n + radius) % (2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


def _gaussian_radius(sigma: float, truncate: float) -> int:
    return int(truncate * sigma + 0.5)  # scipy.ndimage's radius rule


def _gaussian_taps(sigma: float, truncate: float) -> list[float]:
    """scipy.ndimage's normalised 1D Gaussian kernel (2 * radius + 1 taps)."""
    radius = _gaussian_radius(sigma, truncate)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    return (taps / taps.sum()).tolist()


def _tap_sum(x: Any, dim: int, n: int, taps: list[float]) -> Any:
    """``sum_i taps[i] * x[i:i + n]`` along ``dim`` of a tensor padded by the kernel's radius: one
    fused multiply-add per tap over shifted views (on CPU several times faster than a conv)."""
    acc = x.narrow(dim, 0, n) * taps[0]
    for i in range(1, len(taps)):
        acc.add_(x.narrow(dim, i, n), alpha=taps[i])
    return acc


class _GaussianBlur:
    """Separable 2D Gaussian blur with scipy's kernel and boundary, split in two steps.

    :meth:`pad` pads (N, rows, cols) symmetrically by the kernel radius; :meth:`valid` blurs a padded
    tensor back to (N, rows, cols). Padding commutes with voxel-wise products, so SSIM pads its two
    images once and blurs all five moments without padding again. Each 1D pass is a sum of shifted
    views, one fused multiply-add per tap: on CPU several times faster than a one-channel conv2d,
    and the same code runs on any device.
    """

    def __init__(self, rows: int, cols: int, sigma: float, device: Any) -> None:
        import torch

        self.taps = _gaussian_taps(sigma, SSIM_TRUNCATE)
        radius = len(self.taps) // 2
        self.rows, self.cols, self.radius = rows, cols, radius
        self.idx_rows = torch.as_tensor(_symmetric_index(rows, radius), device=device)
        self.idx_cols = torch.as_tensor(_symmetric_index(cols, radius), device=device)

    def _pad_dim(self, x: Any, dim: int, n: int, index: Any) -> Any:
        import torch

        r = self.radius
        if r > n:  # reflections of reflections: gather by index
            return x.index_select(dim, index)
        # cat of flipped edge strips: much faster on CPU than a gather along the last dim
        return torch.cat([x.narrow(dim, 0, r).flip(dim), x, x.narrow(dim, n - r, r).flip(dim)], dim)

    def pad(self, x: Any) -> Any:
        return self._pad_dim(self._pad_dim(x, 2, self.cols, self.idx_cols), 1, self.rows, self.idx_rows)

    def valid(self, padded: Any) -> Any:
        return _tap_sum(_tap_sum(padded, 2, self.cols, self.taps), 1, self.rows, self.taps)


def _ssim_tensor(a: Any, b: Any, blur: _GaussianBlur, data_range: float, centre: float) -> Any:
    """Local SSIM map of two (N, rows, cols) tensors (population covariance, Wang's constants).

    Moments are taken of values centred on ``centre`` (the middle of the clip window) to limit
    cancellation in E[x^2] - E[x]^2; means get ``centre`` back for the luminance term, which is not
    shift-invariant. Even centred, float32 leaves errors ~2e-4 in flat clipped regions, hence
    float64 wherever the device has it (see :func:`_torch_dtype`).
    """
    if a.device.type != "cpu":
        return _ssim_slices(a, b, blur, data_range, centre)
    # On CPU one slice at a time keeps the working set in cache (measured ~1.5x faster).
    out = a.new_empty(a.shape)
    for i in range(a.shape[0]):
        out[i] = _ssim_slices(a[i:i + 1], b[i:i + 1], blur, data_range, centre)[0]
    return out


def _ssim_slices(a: Any, b: Any, blur: _GaussianBlur, data_range: float, centre: float) -> Any:
    a = blur.pad(a - centre)
    b = blur.pad(b - centre)
    mu_a, mu_b = blur.valid(a), blur.valid(b)
    var_a = blur.valid(a * a).sub_(mu_a * mu_a)  # one moment at a time keeps the peak memory low
    var_b = blur.valid(b * b).sub_(mu_b * mu_b)
    cov = blur.valid(a.mul_(b)).sub_(mu_a * mu_b)  # a is not needed any more
    mu_a += centre
    mu_b += centre
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    num = (mu_a * mu_b).mul_(2).add_(c1).mul_(cov.mul_(2).add_(c2))
    den = mu_a.mul_(mu_a).add_(mu_b.mul_(mu_b)).add_(c1).mul_(var_a.add_(var_b).add_(c2))
    return num.div_(den)


def _torch_dtype(device: Any) -> Any:
    """float64 (agrees with scikit-image to ~1e-12), except on Apple MPS, which has no float64."""
    import torch

    return torch.float32 if device.type == "mps" else torch.float64


def _check_window(window: Any, sigma: Any) -> tuple[float, float, float]:
    try:
        lo, hi = (float(w) for w in window)
        sigma = float(sigma)
    except (TypeError, ValueError):
        raise InputError(f"window must be two numbers (low, high) HU and sigma a number; "
                         f"got {window!r}, {sigma!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InputError(f"window must be (low, high) with low < high, got {window!r}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise InputError(f"Gaussian window sigma must be positive, got {sigma!r}")
    return lo, hi, sigma


# --------------------------------------------------------------------------------------------------
# Voxel maps
# --------------------------------------------------------------------------------------------------

class NSelfSSIMNoise:
    """The noise NSelfSSIM adds: standard-normal float32 slices, one after the other, from torch's CPU
    generator seeded with ``seed``: the same stream whatever the device the maps run on, and on every
    CPU up to the last bit (its vectorised transform rounds differently on some). ~3x faster than
    numpy's sampler, which cost a quarter of the maps' time."""

    def __init__(self, seed: int) -> None:
        import torch

        self.generator = torch.Generator().manual_seed(int(seed))

    def slices(self, n: int, rows: int, cols: int) -> np.ndarray:
        """The next ``n`` slices, (n, rows, cols); one draw per slice, so any split gives the same stream."""
        import torch

        out = torch.empty((n, rows, cols), dtype=torch.float32)
        for k in range(n):
            out[k].normal_(generator=self.generator)
        return out.numpy()


def nselfssim_map(volume: Volume, *, noise_sd: float = NSELFSSIM_NOISE_SD, window: tuple[float, float] = NSELFSSIM_WINDOW,
                  sigma: float = 1.5, seed: int = 0, device: Any = "auto", chunk_slices: int = 16,
                  progress: StepProgress | None = None, should_cancel: ShouldCancel | None = None) -> Volume:
    """NSelfSSIM map: local SSIM between ``a = clip(img, lo, hi)`` and ``b = clip(img + N(0, noise_sd), lo, hi)``.

    SSIM is Wang et al.'s: 2D (in-plane, per slice along the axial axis), Gaussian window
    ``sigma`` truncated at 3.5 sigma, population covariance, K1 = 0.01, K2 = 0.03, data range
    ``hi - lo``, borders by symmetric reflection; i.e. scikit-image's
    ``structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=hi - lo, full=True)`` map (agreement to 1e-4 is tested).

    Defaults: the soft-tissue window -160..240 HU with 20 HU noise. The talk publishes no settings;
    A calibration on simulated MVCT/kV CT pairs shows this window with ~20 HU noise
    reproduces its pattern (MVCT ~0.9, kVCT ~0.73), whereas wide windows make every image ~0.98.

    Deterministic: the noise is :class:`NSelfSSIMNoise` (torch's CPU generator seeded with ``seed``),
    one slice after the other in slice order, so the map does not depend on ``chunk_slices`` or the
    device.
    Only each chunk's box around the voxels above ``lo`` (with or without the noise) is computed:
    outside it both images are ``lo`` throughout the window, whose SSIM is exactly 1.
    Returns a float32 Volume with the input's geometry (unitless, at most 1).
    """
    return nselfssim_maps([volume], noise_sd=noise_sd, window=window, sigma=sigma, seed=seed, device=device,
                          chunk_slices=chunk_slices, progress=progress, should_cancel=should_cancel)[0]


def nselfssim_maps(volumes: list[Volume], *, noise_sd: float = NSELFSSIM_NOISE_SD,
                   window: tuple[float, float] = NSELFSSIM_WINDOW, sigma: float = 1.5, seed: int = 0,
                   device: Any = "auto", chunk_slices: int = 16, progress: StepProgress | None = None,
                   should_cancel: ShouldCancel | None = None) -> list[Volume]:
    """:func:`nselfssim_map` of images on one grid (an MVCT and its conversion) in one pass over the
    slices, with one draw of the noise: the same noise, hence the same maps, as one call per image.
    ``progress(done, total)`` counts slices over all the maps."""
    import torch

    for v in volumes:
        _check_volume(v, "image")
    if any(not volumes[0].same_geometry(v) for v in volumes[1:]):
        raise InputError("NSelfSSIM maps computed together need images on one voxel grid")
    lo, hi, sigma = _check_window(window, sigma)
    noise_sd = float(noise_sd)
    if not (math.isfinite(noise_sd) and noise_sd >= 0):
        raise InputError(f"noise SD must be a non-negative number of HU, got {noise_sd!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer (the map is reproducible), got {seed!r}")
    chunk_slices = _check_chunk(chunk_slices)
    dev = resolve_device(device)
    dtype = _torch_dtype(dev)
    axis = volumes[0].axial_axis()
    rows, cols = (s for a, s in enumerate(volumes[0].array.shape) if a != axis)
    radius = _gaussian_radius(sigma, SSIM_TRUNCATE)
    noise_stream = NSelfSSIMNoise(seed)
    k = len(volumes)

    def one_map(img: np.ndarray, noise: np.ndarray) -> np.ndarray:
        out = np.ones(img.shape, np.float32)
        noisy = img + noise * np.float32(noise_sd)
        box = _box_2d((img > lo - 1.0) | (noisy > lo - 1.0), radius)  # 1 HU of slack: float32 rounding
        if box is None:
            return out
        r0, r1, c0, c1 = box
        blur = _GaussianBlur(r1 - r0, c1 - c0, sigma, dev)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(img[:, r0:r1, c0:c1])).to(dev, torch.float32)
            n = torch.from_numpy(np.ascontiguousarray(noise[:, r0:r1, c0:c1])).to(dev)
            # the noisy image is formed in float32, then everything runs in the compute dtype
            y = (x + n * noise_sd).to(dtype).clamp(lo, hi)
            x = x.to(dtype).clamp(lo, hi)
            out[:, r0:r1, c0:c1] = _ssim_tensor(x, y, blur, hi - lo, 0.5 * (lo + hi)).float().cpu().numpy()
        return out

    views = [np.moveaxis(v.array, axis, 0) for v in volumes]
    outs = [np.empty(v.array.shape, np.float32) for v in volumes]
    out_views = [np.moveaxis(o, axis, 0) for o in outs]
    total = views[0].shape[0]
    for start in range(0, total, chunk_slices):
        if should_cancel is not None and should_cancel():
            raise EnhanceCancelled(f"NSelfSSIM map cancelled after {start} of {total} slices")
        stop = min(total, start + chunk_slices)
        noise = noise_stream.slices(stop - start, rows, cols)
        for view, out_view in zip(views, out_views):
            out_view[start:stop] = one_map(np.asarray(view[start:stop], dtype=np.float32), noise)
        if progress is not None:
            progress(k * stop, k * total)
    return [v.with_array(o, map="nselfssim", noise_sd=noise_sd, window=[lo, hi], sigma=sigma, seed=seed)
            for v, o in zip(volumes, outs)]


def _box_2d(hot: np.ndarray, margin: int) -> tuple[int, int, int, int] | None:
    """In-plane box (rows r0:r1, columns c0:c1) of ``hot`` (N, rows, cols) over all N, grown by
    ``margin`` and clipped to the slice; None when nothing is hot."""
    rows = np.flatnonzero(hot.any(axis=(0, 2)))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(hot.any(axis=(0, 1)))
    n_r, n_c = hot.shape[1:]
    return (max(0, int(rows[0]) - margin), min(n_r, int(rows[-1]) + 1 + margin),
            max(0, int(cols[0]) - margin), min(n_c, int(cols[-1]) + 1 + margin))


def _gradient(d: Any, dim: int, h: float) -> Any:
    """np.gradient along ``dim`` (uniform spacing ``h``): central inside, one-sided at the borders.

    An axis of length 1 has no in-plane neighbour: its gradient is 0.
    """
    import torch

    n = d.shape[dim]
    g = torch.zeros_like(d)
    if n < 2:
        return g
    g.narrow(dim, 1, n - 2).copy_((d.narrow(dim, 2, n - 2) - d.narrow(dim, 0, n - 2)) / (2.0 * h))
    g.narrow(dim, 0, 1).copy_((d.narrow(dim, 1, 1) - d.narrow(dim, 0, 1)) / h)
    g.narrow(dim, n - 1, 1).copy_((d.narrow(dim, n - 1, 1) - d.narrow(dim, n - 2, 1)) / h)
    return g


def dig_map(original: Volume, converted: Volume, *, device: Any = "auto", chunk_slices: int = 16,
            progress: StepProgress | None = None, should_cancel: ShouldCancel | None = None) -> Volume:
    """DIG map: ``|grad(original - converted)|^2`` per voxel in HU^2/mm^2, gradient in-plane only.

    The in-plane axes are the two numpy axes other than ``original.axial_axis()``, with their
    physical spacing (``Volume.inplane_spacing``). Derivatives follow ``numpy.gradient``: central
    differences inside, one-sided first differences at the image border (an axis of length 1
    contributes 0). ``converted`` must be on the original's exact voxel grid; identical images give
    exactly 0. Returns a float32 Volume with the original's geometry.
    """
    import torch

    _check_volume(original, "original image")
    _check_volume(converted, "converted image")
    if not original.same_geometry(converted):
        raise InputError("the converted image's geometry (shape, spacing, origin or direction) differs from the "
                         "original's; DIG needs the conversion on the original's voxel grid")
    chunk_slices = _check_chunk(chunk_slices)
    dev = resolve_device(device)
    axis = original.axial_axis()
    h_rows, h_cols = original.inplane_spacing(axis)

    def chunk(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # float32 (never integer overflow); exactly 0 where the images are equal. The gradient is 0
        # where the difference is 0 within one voxel: only the box around it (plus one voxel, so that
        # the box's own border keeps central differences) is computed.
        d = a.astype(np.float32) - b.astype(np.float32)
        out = np.zeros(d.shape, np.float32)
        box = _box_2d(d != 0, 1)
        if box is None:
            return out
        r0, r1, c0, c1 = box
        e0, e1, f0, f1 = max(0, r0 - 1), min(d.shape[1], r1 + 1), max(0, c0 - 1), min(d.shape[2], c1 + 1)
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(d[:, e0:e1, f0:f1])).to(dev)
            g_r = _gradient(t, 1, h_rows)
            g_c = _gradient(t, 2, h_cols)
            g = (g_r * g_r + g_c * g_c).cpu().numpy()
        out[:, r0:r1, c0:c1] = g[:, r0 - e0:r1 - e0, c0 - f0:c1 - f0]
        return out

    out = _map_slices([original.array, converted.array], axis, chunk, chunk_slices, progress, should_cancel,
                      "DIG map")
    return original.with_array(out, map="dig", units="HU^2/mm^2")


# --------------------------------------------------------------------------------------------------
# Body mask and summaries
# --------------------------------------------------------------------------------------------------

def body_mask(volume: Volume, threshold_hu: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """Automatic body mask (bool, the volume's shape).

    1. ``HU > threshold_hu`` (:data:`BODY_THRESHOLD_HU`);
    2. in-plane binary opening of radius ~2 mm (``BODY_OPENING_MM``; at least 1 pixel) to drop noise
       specks and break thin bridges to the couch, cables or immobilisation mask;
    3. the largest 3D connected component (the patient; a separate couch is dropped);
    4. holes filled slice by slice along the axial axis, so enclosed air (airway, sinuses, lungs,
       bowel gas) counts as body. Air open to the outside in a slice (e.g. at the nostrils) stays out.

    If the opening removes everything (a very small object), the thresholded mask is used instead.
    Returns an all-False mask when nothing exceeds the threshold; :func:`summarize` refuses that.
    """
    _check_volume(volume, "image")
    axis = volume.axial_axis()
    full = volume.array > float(threshold_hu)
    radius = max(1, min(_MAX_OPENING_PX, round(BODY_OPENING_MM / min(volume.inplane_spacing(axis)))))
    # The steps run on the thresholded voxels' box plus a frame of the opening's radius and one voxel:
    # nothing outside it is above the threshold, so the opening, the components and the holes (whose
    # outside stays connected through the frame) are those of the whole volume.
    box = _box_3d(full, axis, radius + 1)
    if box is None:
        return full
    mask = full[box]
    cross = np.expand_dims(ndimage.generate_binary_structure(2, 1), axis)  # in-plane 4-neighbourhood
    opened = ndimage.binary_opening(mask, structure=cross, iterations=radius)
    if opened.any():
        mask = opened
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    # Holes, slice by slice: background components (in-plane 4-neighbourhood, as binary_fill_holes
    # takes them) that do not reach the box's in-plane edges; one labelling of the whole box.
    in_plane = np.zeros((3, 3, 3), bool)
    np.moveaxis(in_plane, axis, 0)[1] = ndimage.generate_binary_structure(2, 1)
    background, _ = ndimage.label(~mask, structure=in_plane)
    view = np.moveaxis(background, axis, 0)
    edge_labels = np.unique(np.concatenate([view[:, 0].ravel(), view[:, -1].ravel(), view[:, :, 0].ravel(),
                                            view[:, :, -1].ravel()]))
    outside = np.zeros(int(background.max()) + 1, bool)
    outside[edge_labels] = True
    outside[0] = False  # label 0: the mask itself
    mask = ~outside[background]
    out = np.zeros(full.shape, bool)
    out[box] = mask
    return out


def _box_3d(mask: np.ndarray, axis: int, margin: int) -> tuple[slice, slice, slice] | None:
    """Index of ``mask``'s bounding box, grown in-plane (not along ``axis``) by ``margin``; None if empty."""
    index = []
    for a in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(b for b in range(mask.ndim) if b != a)))
        if hit.size == 0:
            return None
        grow = 0 if a == axis else margin
        index.append(slice(max(0, int(hit[0]) - grow), min(mask.shape[a], int(hit[-1]) + 1 + grow)))
    return tuple(index)


def summarize(values: Volume | np.ndarray, mask: np.ndarray, axis: int = 0) -> dict:
    """Mean, median and 95th percentile of ``values`` inside ``mask``, and per-slice means along ``axis``.

    Returns plain Python numbers (JSON-serialisable): ``{"mean", "median", "p95", "n_voxels",
    "per_slice_mean"}``; ``per_slice_mean`` has one entry per index along ``axis``, ``None`` where
    the slice holds no mask voxel. The 95th percentile interpolates linearly (numpy's default).
    """
    arr = values.array if isinstance(values, Volume) else np.asarray(values)
    m = np.asarray(mask, dtype=bool)
    if m.shape != arr.shape:
        raise InputError(f"mask shape {m.shape} does not match the values' shape {arr.shape}")
    if not -arr.ndim <= axis < arr.ndim:
        raise InputError(f"axis {axis} is out of range for a {arr.ndim}D array")
    m_view = np.moveaxis(m, axis, 0)
    inside = np.moveaxis(arr, axis, 0)[m_view].astype(np.float64)  # slice after slice
    if inside.size == 0:
        raise InputError("the mask is empty: there is no voxel to summarise (no body found above the "
                         "threshold? give a mask)")
    if not np.isfinite(inside).all():
        raise InputError("the values hold NaN or infinite voxels inside the mask")
    counts = np.count_nonzero(m_view.reshape(m_view.shape[0], -1), axis=1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sums = np.add.reduceat(inside, starts[counts > 0])  # one pass; empty slices are left out
    per_slice: list[float | None] = [None] * len(counts)
    for k, total in zip(np.flatnonzero(counts), sums):
        per_slice[k] = float(total / counts[k])
    median, p95 = np.percentile(inside, [50, 95])  # one partition for both
    return {"mean": float(inside.mean()), "median": float(median), "p95": float(p95), "n_voxels": int(inside.size),
            "per_slice_mean": per_slice}


# --------------------------------------------------------------------------------------------------
# Tissue change
# --------------------------------------------------------------------------------------------------

#: Tissue classes by HU (kV scale), lowest first: (name, upper bound). The bounds sit between the
#: tissues' values (air -1000, lung about -750, fat about -90, water/muscle 0..60, bone > 300).
TISSUE_CLASSES: tuple[tuple[str, float], ...] = (
    ("air", -850.0), ("lung", -250.0), ("fat", -30.0), ("soft tissue", 250.0), ("bone", math.inf))
#: A voxel counts as changed only when the output leaves its reference class by more than this: noise
#: and small, smooth HU shifts near a class boundary (fat at -40 next to -30) are not a change of tissue.
TISSUE_MARGIN_HU = 50.0
#: In-plane Gaussian smoothing before classifying both images: MVCT noise (tens of HU) would otherwise
#: flip single voxels between neighbouring classes.
TISSUE_SMOOTH_MM = 1.0
TISSUE_TRUNCATE = 4.0  # scipy's default truncation of that Gaussian, in sigmas


def _tissue_class(hu: Any) -> Any:
    """Class index (0 = air ... 4 = bone) of HU values, a torch tensor: the count of class bounds at
    or below each value (numpy's searchsorted, side='right')."""
    import torch

    cls = torch.zeros(hu.shape, dtype=torch.int64, device=hu.device)
    for _, bound in TISSUE_CLASSES[:-1]:
        cls += hu >= bound
    return cls


def _blur_nearest(t: Any, dim: int, sigma: float) -> Any:
    """scipy.ndimage.gaussian_filter1d(mode='nearest', truncate=TISSUE_TRUNCATE) along ``dim`` of a
    torch tensor (float32)."""
    import torch

    if sigma <= 0:
        return t
    taps = _gaussian_taps(sigma, TISSUE_TRUNCATE)
    n = t.shape[dim]
    edge = list(t.shape)
    edge[dim] = len(taps) // 2
    padded = torch.cat([t.narrow(dim, 0, 1).expand(edge), t, t.narrow(dim, n - 1, 1).expand(edge)], dim)
    return _tap_sum(padded, dim, n, taps)


def tissue_change_map(reference: Volume, converted: Volume, mask: np.ndarray | None = None,
                      calibrate: Calibration | Callable[[np.ndarray], np.ndarray] | None = None,
                      chunk_slices: int = 16) -> tuple[Volume, dict]:
    """Voxels whose tissue class (air, lung, fat, soft tissue, bone) the conversion changed.

    ``reference`` is what the tissue should be (the calibrated MVCT: the conversion may shift HU
    within a class but not turn fat into air); with ``calibrate`` (a :class:`Calibration`, or a
    function of HU arrays) it is ``calibrate(reference)``, applied only where needed. Both images are
    smoothed in-plane (:data:`TISSUE_SMOOTH_MM`, scipy's Gaussian with 'nearest' borders, computed
    with torch) before classifying. Returns the map (1 = changed, 0 = not; inside ``mask`` only) and
    a JSON-able summary: changed volume in cm³, fraction of the mask, and the volume of each class
    transition ("fat -> air").
    """
    import torch

    if not reference.same_geometry(converted):
        raise InputError("the tissue-change map compares two images on the same voxel grid")
    curve = calibrate.apply if isinstance(calibrate, Calibration) else calibrate
    mask = body_mask(reference if curve is None else reference.with_array(curve(reference.array))) \
        if mask is None else np.asarray(mask, dtype=bool)
    chunk_slices = _check_chunk(chunk_slices)
    axis = reference.axial_axis()
    inplane = [x for x in range(3) if x != axis]
    sigma = {a: TISSUE_SMOOTH_MM / sp for a, sp in zip(inplane, reference.inplane_spacing(axis))}
    changed = np.zeros(mask.shape, bool)
    # Only the mask's box counts; smoothing needs the truncated kernel's radius around it (scipy's
    # rule; 'nearest' at the box's edge then touches no voxel of the mask).
    box = _box_3d(mask, axis, max(_gaussian_radius(s, TISSUE_TRUNCATE) for s in sigma.values()) + 1)
    transitions: dict[str, float] = {}
    codes = np.zeros(len(TISSUE_CLASSES) * 8, np.int64)
    if box is not None:
        bounds = torch.tensor([-math.inf] + [b for _, b in TISSUE_CLASSES], dtype=torch.float32)
        lower, upper = bounds[:-1] - TISSUE_MARGIN_HU, bounds[1:] + TISSUE_MARGIN_HU
        # (N, rows, cols) views of the box, N along the axial axis; dims 1 and 2 are in-plane
        views = [np.moveaxis(a[box], axis, 0) for a in (reference.array, converted.array, mask)]
        sig = [sigma[a] for a in inplane]
        out_view = np.moveaxis(changed[box], axis, 0)  # a view: writes land in ``changed``
        with torch.inference_mode():
            for start in range(0, views[0].shape[0], chunk_slices):
                part = slice(start, start + chunk_slices)
                ref = torch.from_numpy(np.array(views[0][part], dtype=np.float32))
                if isinstance(calibrate, Calibration):
                    ref = calibrate.apply_torch(ref)
                elif calibrate is not None:
                    ref = torch.from_numpy(np.asarray(calibrate(ref.numpy()), dtype=np.float32))
                out = torch.from_numpy(np.array(views[1][part], dtype=np.float32))
                ref, out = (_blur_nearest(_blur_nearest(t, 1, sig[0]), 2, sig[1]) for t in (ref, out))
                cls_ref = _tissue_class(ref)
                hit = torch.from_numpy(np.ascontiguousarray(views[2][part])) & (
                    (out < lower[cls_ref]) | (out > upper[cls_ref]))
                out_view[part] = hit.numpy()
                if bool(hit.any()):
                    pair = cls_ref[hit] * 8 + _tissue_class(out[hit])
                    codes += np.bincount(pair.numpy(), minlength=codes.size)
    voxel_cm3 = float(np.prod(reference.spacing)) / 1000.0
    for code in np.flatnonzero(codes):
        name = f"{TISSUE_CLASSES[code // 8][0]} -> {TISSUE_CLASSES[code % 8][0]}"
        transitions[name] = round(float(codes[code]) * voxel_cm3, 4)
    n_mask = int(mask.sum())
    n_changed = int(changed.sum())
    summary = {"volume_cm3": n_changed * voxel_cm3, "fraction": n_changed / max(1, n_mask),
               "n_voxels": n_changed, "transitions_cm3": transitions,
               "per_slice_cm3": (np.moveaxis(changed, axis, 0).reshape(changed.shape[axis], -1).sum(1)
                                 * voxel_cm3).round(4).tolist(),
               "classes": {name: bound for name, bound in TISSUE_CLASSES[:-1]}, "margin_hu": TISSUE_MARGIN_HU,
               "smoothing_mm": TISSUE_SMOOTH_MM}
    return reference.with_array(changed.astype(np.float32)), summary


@dataclasses.dataclass
class Assessment:
    """Maps and summaries of :func:`assess`; ``summaries`` is JSON-serialisable."""

    mask: np.ndarray
    nselfssim_input: Volume
    nselfssim_output: Volume | None
    dig: Volume | None
    summaries: dict
    tissue_change: Volume | None = None


def assess(original: Volume, converted: Volume | None = None, *, noise_sd: float = NSELFSSIM_NOISE_SD,
           window: tuple[float, float] = NSELFSSIM_WINDOW, sigma: float = 1.5, seed: int = 0,
           device: Any = "auto", mask: np.ndarray | None = None,
           anchor: Volume | Calibration | Callable[[np.ndarray], np.ndarray] | None = None,
           progress: StepProgress | None = None, should_cancel: ShouldCancel | None = None,
           on_ready: Callable[[str, Volume], None] | None = None) -> Assessment:
    """No-reference assessment of an image and, if given, its conversion.

    The mask is :func:`body_mask` of the original unless one is given. Computes NSelfSSIM of the
    original (and of ``converted``), and DIG(original, converted). ``summaries`` holds
    ``{"nselfssim": {"input": s[, "output": s]}, ["dig": {"output": s},] "body_mask": {...},
    "parameters": {...}}`` where each ``s`` is a :func:`summarize` dict along the axial axis; the
    "dig" key and the "output" entries exist only when ``converted`` is given. Both NSelfSSIM maps
    use the same seed, hence the same noise. progress(done, total) counts slices over all maps.
    With ``converted``, the tissue-change map compares it with ``anchor`` (the calibrated original,
    or the calibration, a :class:`Calibration` or a function of HU arrays, applied only inside the
    body's box; default the original itself) under ``summaries["tissue_change"]["output"]``. Both NSelfSSIM maps come from one
    pass with one draw of the noise. ``on_ready(name, map)`` is called with the conversion's maps as
    each is done: "nselfssim", "dig", "tissue_change".
    """
    ready = on_ready or (lambda name, volume: None)

    _check_volume(original, "original image")
    if converted is not None:
        _check_volume(converted, "converted image")
        if not original.same_geometry(converted):
            raise InputError("the converted image's geometry (shape, spacing, origin or direction) differs from the "
                             "original's; give the conversion on the original's voxel grid")
    lo, hi, sigma = _check_window(window, sigma)
    dev = resolve_device(device)  # once, so a bad device fails before any work
    axis = original.axial_axis()
    if mask is None:
        mask_source, threshold = "automatic", BODY_THRESHOLD_HU
        mask = body_mask(original, threshold)
    else:
        mask_source, threshold = "given", None
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != original.array.shape:
            raise InputError(f"mask shape {mask.shape} does not match the image's {original.array.shape}")
    if not mask.any():
        raise InputError("the body mask is empty (nothing above -400 HU?); check the image is CT in HU or give a mask")

    n = original.array.shape[axis]
    total = n * (3 if converted is not None else 1)
    ssim_args = dict(noise_sd=noise_sd, window=(lo, hi), sigma=sigma, seed=seed, device=dev,
                     should_cancel=should_cancel)
    images = [original] if converted is None else [original, converted]
    maps = nselfssim_maps(images, progress=_offset_progress(progress, 0, total), **ssim_args)
    ns_in, ns_out = maps[0], (maps[1] if converted is not None else None)
    summaries: dict[str, Any] = {"nselfssim": {"input": summarize(ns_in, mask, axis)}}
    dig = None
    if converted is not None:
        ready("nselfssim", ns_out)
        summaries["nselfssim"]["output"] = summarize(ns_out, mask, axis)
        dig = dig_map(original, converted, device=dev, progress=_offset_progress(progress, 2 * n, total),
                      should_cancel=should_cancel)
        ready("dig", dig)
        summaries["dig"] = {"output": summarize(dig, mask, axis)}
        if callable(anchor) or isinstance(anchor, Calibration):
            tissue, tissue_summary = tissue_change_map(original, converted, mask, calibrate=anchor)
        else:
            tissue, tissue_summary = tissue_change_map(anchor if anchor is not None else original, converted, mask)
        ready("tissue_change", tissue)
        summaries["tissue_change"] = {"output": tissue_summary}
    n_mask = int(mask.sum())
    summaries["body_mask"] = {"source": mask_source, "threshold_hu": threshold, "n_voxels": n_mask,
                              "fraction": n_mask / mask.size}
    summaries["parameters"] = {
        "noise_sd": float(noise_sd), "window": [lo, hi], "data_range": hi - lo, "sigma": sigma,
        "truncate": SSIM_TRUNCATE, "K1": SSIM_K1, "K2": SSIM_K2, "seed": int(seed), "device": str(dev),
        "axial_axis": axis, "ssim": "2D per slice, Gaussian window, population covariance (Wang et al. 2004)",
        "dig_units": "HU^2/mm^2",
    }
    return Assessment(mask, ns_in, ns_out, dig, summaries, tissue if converted is not None else None)


# --------------------------------------------------------------------------------------------------
# Full-reference metrics (SynthRAD convention)
# --------------------------------------------------------------------------------------------------

def _pair(pred: Any, ref: Any, mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Arrays of a prediction/reference pair (Volumes or arrays), the mask, and the slicing axis."""
    if isinstance(pred, Volume) and isinstance(ref, Volume) and not pred.same_geometry(ref):
        raise InputError("prediction and reference differ in geometry (shape, spacing, origin or direction)")
    axis = ref.axial_axis() if isinstance(ref, Volume) else pred.axial_axis() if isinstance(pred, Volume) else 0
    p = np.asarray(pred.array if isinstance(pred, Volume) else pred)
    r = np.asarray(ref.array if isinstance(ref, Volume) else ref)
    if p.shape != r.shape:
        raise InputError(f"prediction shape {p.shape} differs from the reference's {r.shape}")
    if p.ndim == 2:  # one slice
        p, r, axis = p[np.newaxis], r[np.newaxis], 0
        mask = None if mask is None else np.asarray(mask)[np.newaxis]
    if p.ndim != 3 or p.size == 0:
        raise InputError(f"full-reference metrics need 2D or 3D non-empty images, got shape {p.shape}")
    if not (np.isfinite(p).all() and np.isfinite(r).all()):
        raise InputError("prediction or reference has NaN or infinite voxels")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != p.shape:
            raise InputError(f"mask shape {mask.shape} does not match the images' {p.shape}")
        if not mask.any():
            raise InputError("the mask is empty: no voxel to compare")
    return p, r, mask, axis


def mae_in_mask(pred: Any, ref: Any, mask: Any) -> float:
    """Mean absolute error (HU) inside ``mask`` (all voxels if None), on unclipped HU."""
    p, r, m, _ = _pair(pred, ref, mask)
    if m is not None:
        p, r = p[m], r[m]
    return float(np.mean(np.abs(p.astype(np.float64) - r.astype(np.float64))))


def psnr_synthrad(pred: Any, ref: Any, mask: Any = None) -> float:
    """PSNR (dB) with both images clipped to [-1024, 3000] HU and data range 4024 (SynthRAD).

    The MSE is taken inside ``mask`` when given, else over all voxels; identical images give +inf.
    """
    p, r, m, _ = _pair(pred, ref, mask)
    lo, hi = SYNTHRAD_RANGE
    if m is not None:
        p, r = p[m], r[m]
    diff = np.clip(p.astype(np.float64), lo, hi) - np.clip(r.astype(np.float64), lo, hi)
    mse = float(np.mean(diff * diff))
    return math.inf if mse == 0.0 else 10.0 * math.log10((hi - lo) ** 2 / mse)


def ssim_synthrad(pred: Any, ref: Any, mask: Any = None) -> float:
    """SSIM with both images clipped to [-1024, 3000] HU, data range 4024; mean of the map inside ``mask``.

    The map is the same Wang et al. SSIM as NSelfSSIM (2D per slice along the axial axis, Gaussian
    sigma 1.5); note that SynthRAD's own script uses scikit-image's default 3D 7-voxel uniform
    window instead, so values are close but not identical to theirs. Mean over all voxels if no mask.
    """
    import torch

    p, r, m, axis = _pair(pred, ref, mask)
    lo, hi = SYNTHRAD_RANGE
    dev = resolve_device("auto")
    dtype = _torch_dtype(dev)
    rows, cols = (s for a, s in enumerate(p.shape) if a != axis)
    blur = _GaussianBlur(rows, cols, 1.5, dev)

    def chunk(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(a).to(dev, dtype).clamp(lo, hi)
            y = torch.from_numpy(b).to(dev, dtype).clamp(lo, hi)
            return _ssim_tensor(x, y, blur, hi - lo, 0.5 * (lo + hi)).float().cpu().numpy()

    s = _map_slices([p.astype(np.float32, copy=False), r.astype(np.float32, copy=False)], axis, chunk, 16,
                    None, None, "SSIM")
    return float(np.mean(s[m] if m is not None else s, dtype=np.float64))
