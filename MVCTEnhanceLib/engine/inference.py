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

With the body crop (the default; see its section) step 3 sees canonical air beyond the body's box
plus :data:`BODY_KEEP_MM` and runs on the body only, with the whole field's result; the change
beyond that box is zero, so air stays the anchor there. A network without statistics over the field
runs on one box per separate part (the body, the couch, an arm) plus its measured receptive field.

The caller's array is never written to; a cancelled run raises :class:`EnhanceCancelled` and
returns nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from scipy import ndimage

from .device import resolve_device
from .errors import EnhanceCancelled, InputError
from .modelcard import STRIDE, ModelCard
from .modelfile import LoadedModel, load_model
from .settings import BODY_THRESHOLD_HU, EnhanceSettings, ShouldCancel, StepProgress
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


def _this_process_cpus() -> set[int]:
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def physical_cores() -> int:
    """CPU cores this process may use: distinct physical cores among the CPUs of its affinity mask,
    capped by a cgroup CPU quota (containers). Hyper-threads add little to convolutions and a
    quota below the machine's cores makes more threads only contend."""
    cores = set()
    for cpu in sorted(_this_process_cpus()):
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(tuple((topology / name).read_text().strip() for name in ("physical_package_id", "core_id")))
        except OSError:  # no sysfs (macOS, Windows): each CPU counts
            cores.add(("cpu", str(cpu)))
    n = len(cores)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, n)


#: Shortest and longest window (s) over which :func:`busy_cores` reads the CPUs. A window starts when
#: this module is imported or at the previous reading, so a job's own start-up (reading its input,
#: importing torch) is the window and costs no wait; an older start is dropped for a fresh window.
CPU_WINDOW_S = (0.2, 10.0)


def _cpu_reading() -> tuple[float, int, int, float] | None:
    """(time, busy ticks, all ticks of this process's CPUs in /proc/stat, this process's own ticks);
    None where there is no /proc/stat (macOS, Windows)."""
    cpus = _this_process_cpus()
    busy = total = 0
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - ticks[4]
    own = os.times()
    return (time.monotonic(), busy, total, (own.user + own.system) * os.sysconf("SC_CLK_TCK")) if total else None


_window_start = _cpu_reading()


def busy_cores() -> int:
    """Physical cores that other processes keep busy now: the CPUs' non-idle ticks over the window
    (:data:`CPU_WINDOW_S`) less this process's own, as a share of all their ticks, times
    :func:`physical_cores`, rounded. Without /proc/stat: the 1-minute load average, rounded. The load
    average alone lags: a job started within a minute of another one's end saw a busy core that was
    idle, and ran on half the cores."""
    global _window_start
    start = _window_start
    if start is None or time.monotonic() - start[0] > CPU_WINDOW_S[1]:
        start = _cpu_reading()
    if start is not None:
        time.sleep(max(0.0, CPU_WINDOW_S[0] - (time.monotonic() - start[0])))
        end = _window_start = _cpu_reading()
        if end is not None and end[2] > start[2]:
            others = max(0.0, (end[1] - start[1]) - (end[3] - start[3]))
            return int(others / (end[2] - start[2]) * physical_cores() + 0.5)
    try:
        return int(os.getloadavg()[0] + 0.5)
    except (OSError, AttributeError):  # no load average (Windows)
        return 0


def automatic_threads() -> int:
    """Intra-op threads for a job: the physical cores this process may use, less those that other
    processes keep busy now (:func:`busy_cores`), at least one. Measured on this project's 2-core
    machine shared with two single-threaded trainings: 2 threads ran the network 2.5x slower than 1
    (every parallel region waits for its slowest thread)."""
    return max(1, physical_cores() - busy_cores())


def resolve_threads(threads: int | None) -> int:
    """Intra-op CPU threads for a job: ``threads``, or :func:`automatic_threads` when None."""
    if threads is None:
        return automatic_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads must be a positive integer (or None: automatic), got {threads!r}")
    return threads


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """torch's intra-op threads set to ``threads`` for the block, restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


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


# --------------------------------------------------------------------------------------------------
# Body crop: the network on the body's box, with the whole field's instance-norm statistics
# --------------------------------------------------------------------------------------------------
# Every instance norm of the generator normalises over the whole slice, and measurably so: on the
# shipped default, another draw of the air noise 64 mm from the body moves body voxels by up to 3 HU,
# and the zero padding of the two stride-2 convolutions at the image border by up to 390 HU. A crop
# of the input alone cannot reproduce the whole-field result, whatever its margin. So the crop mode
# makes the far air canonical (the network input outside the body's box plus BODY_KEEP_MM holds the
# air value) and then computes exactly what the module computes on that field, at the cost of the
# body: the field is the body's box plus context (_Region "crop"), the four image-border corners and
# edges (where the module's own padding makes air non-constant; an edge is constant along itself, so
# one STRIDE-long strip stands for all of it) and everywhere else one value per channel (the air's
# activation, "far"). Layers run region by region in lockstep; an instance norm combines the
# regions' sums with their pixel counts; a padding takes each side's real neighbours (the other
# regions, or the far value) inside the image and the module's own padding outside it.

#: MVCT air kept (not made canonical) around the body's box: the skin's neighbourhood as scanned.
BODY_KEEP_MM = 8.0
#: Canonical air around the kept box that the crop includes (network-grid pixels): the body's
#: influence through the receptive field. Measured on the shipped default, 512 x 512 at 0.78 mm (399
#: on the network grid): 24 px -> 0.5 HU, 32 px -> 0.02 HU, 48 px -> 0.003 HU (max in the body).
BODY_CONTEXT_PX = 32
#: Depth (network-grid pixels) of the image-border zones whose padding artefacts the field carries
#: exactly (a crop closer to a border is extended to it). Measured as above, body 47 % of the field's
#: width: 32 px -> 0.65 HU, 40 px -> 0.08 HU, 48 px -> 0.05 HU, but 48 extends more crops.
BORDER_ZONE_PX = 40
#: More separate parts above the body threshold than this (streaks, many cables) run in one box.
BODY_CROP_MAX_BOXES = 8
#: Above this fraction of the field's pixels the crop saves too little (the regions cost ~1.2x the
#: module per pixel on CPU): the module runs on the field.
BODY_CROP_MAX_FRACTION = 0.8
#: The spot check (one slice of the first cropped batch, run on the whole field too) falls back to
#: the whole field when the crop moved a body voxel by more than this (the test's tolerance).
BODY_CROP_CHECK_HU = 1.0

_POINTWISE = {"ReLU", "LeakyReLU", "Tanh", "Sigmoid", "ELU", "GELU", "SiLU", "Identity", "Dropout"}
_PADS = {"ReflectionPad2d": "reflect", "ReplicationPad2d": "replicate", "ZeroPad2d": "zeros"}


class UnsupportedNetwork(Exception):
    """The module holds a layer (or a composition) the region field cannot follow."""


def _layer_name(module: Any) -> str:
    return getattr(module, "original_name", type(module).__name__)


def _is_residual(module: Any) -> bool:
    # TorchScript prints a residual block as "return torch.add(x, (body).forward(x, ))"; the probe
    # check in plan_network() catches any other composition guessed wrongly.
    code = getattr(module, "code", "") if hasattr(module, "code") else ""
    return _layer_name(module) == "ResidualBlock" or "torch.add(x, " in code


def _plan(module: Any) -> tuple:
    """The layers of ``module`` as nested tuples: ("seq", [...]), ("res", node), ("conv", module,
    pad_mode, (left, right, top, bottom)), ("norm", module), ("point", module), ("up", factor)."""
    name = _layer_name(module)
    children = [child for _, child in module.named_children()]
    if name == "Conv2d":
        if isinstance(module.padding, str) or module.stride[0] != module.stride[1] or module.stride[0] not in (1, 2):
            raise UnsupportedNetwork(f"Conv2d with padding {module.padding!r}, stride {module.stride}")
        if module.padding_mode not in ("zeros", "reflect", "replicate"):
            raise UnsupportedNetwork(f"Conv2d padding mode {module.padding_mode}")
        ph, pw = module.padding
        return ("conv", module, module.padding_mode, (pw, pw, ph, ph))
    if name == "InstanceNorm2d":
        if module.track_running_stats:
            raise UnsupportedNetwork("InstanceNorm2d with running statistics")
        return ("norm", module)
    if name in _POINTWISE:
        return ("point", module)
    if name == "Upsample":
        factor = float(module.scale_factor or 0)
        if module.mode != "nearest" or module.size is not None or factor != int(factor) or factor < 1:
            raise UnsupportedNetwork(f"Upsample mode {module.mode}")
        return ("up", int(factor))
    if name in _PADS:
        return ("pad", _PADS[name], tuple(int(p) for p in module.padding))
    if not children:
        raise UnsupportedNetwork(f"layer {name}")
    if len(children) == 1 and _is_residual(module):
        return ("res", _plan(children[0]))
    nodes: list[tuple] = []
    for node in (_plan(child) for child in children):  # a padding layer is fused into the next convolution
        if nodes and nodes[-1][0] == "pad" and node[0] == "conv" and not any(node[3]):
            nodes[-1] = ("conv", node[1], nodes[-1][1], nodes[-1][2])
        else:
            nodes.append(node)
    if any(n[0] == "pad" for n in nodes):
        raise UnsupportedNetwork("a padding layer that does not precede a convolution")
    return ("seq", nodes)


def _downsampling(node: tuple) -> int:
    """The largest cumulative stride inside ``node`` (region positions must be multiples of it)."""
    worst, current = 1, 1

    def walk(n: tuple) -> None:
        nonlocal worst, current
        if n[0] == "seq":
            for child in n[1]:
                walk(child)
        elif n[0] == "res":
            walk(n[1])
        elif n[0] == "conv":
            current *= n[1].stride[0]
            worst = max(worst, current)
        elif n[0] == "up":
            current = max(1, current // n[1])

    walk(node)
    return worst


def _first_conv(module: Any) -> Any | None:
    return next((m for m in module.modules() if _layer_name(m) == "Conv2d"), None)


def _probe(module: Any, channels: int, size: int, seed: int) -> Any:
    """A seeded random input in [-1, 1] (1, channels, size, size) on the module's device and dtype."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    param = next(iter(module.parameters()))
    return (torch.rand((1, channels, size, size), generator=gen) * 2 - 1).to(param.device, param.dtype)


def plan_network(module: Any) -> tuple[tuple | None, str]:
    """The module's plan when the region field reproduces it on a probe, else (None, why not)."""
    import torch

    try:
        plan = _plan(module)
    except UnsupportedNetwork as exc:
        return None, f"the network holds {exc}"
    if STRIDE % _downsampling(plan):
        return None, f"the network downsamples by {_downsampling(plan)}, which does not divide the stride {STRIDE}"
    first = _first_conv(module)
    if first is None:
        return None, "the network has no convolution"
    probe = _probe(module, first.in_channels, 32, seed=0)
    with torch.inference_mode():
        want = module(probe)
        try:
            got = _Field.whole(probe).run(plan)
        except RuntimeError:  # e.g. channels that do not chain: the composition was guessed wrongly
            got = None
    if got is None or got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        return None, "the network's composition is not a chain of layers and residual blocks"
    return plan, ""


def network_is_local(module: Any, context_px: int = BODY_CONTEXT_PX) -> bool:
    """True when the module's output depends only on the input within ``context_px`` of each pixel
    (no normalisation or other statistics over the field: e.g. the bounded full-resolution models),
    checked on a random probe. Such a module run on the body's box plus that margin equals the module
    on the whole field inside the box, so it needs no regions."""
    import torch

    if _first_conv(module) is None:
        return False
    margin = context_px
    size = 5 * margin  # the probe; the window is its middle, margin px in from each side
    # one channel, as the engine feeds every model (a bounded model makes its own channels inside)
    probe = _probe(module, 1, size, seed=1)
    with torch.inference_mode():
        try:
            whole = module(probe)
            window = module(probe[..., margin:size - margin, margin:size - margin])
        except RuntimeError:
            return False
    if window.shape[-2:] != (size - 2 * margin,) * 2:
        return False
    inner = window[..., margin:size - 3 * margin, margin:size - 3 * margin]
    return bool(torch.allclose(inner, whole[..., 2 * margin:size - 2 * margin, 2 * margin:size - 2 * margin],
                               rtol=1e-4, atol=1e-5))

def local_context_px(module: Any) -> int | None:
    """The smallest context margin (network-grid pixels, a multiple of 4 up to :data:`BODY_CONTEXT_PX`)
    at which :func:`network_is_local` holds: the module's receptive field as measured (to that check's
    tolerance), so the box around the body costs no more than the network needs. The default 2.0:
    16 px (8 convolutions and a 9 px high-pass blur, whose outermost taps fall below the tolerance).
    None: not local within BODY_CONTEXT_PX."""
    for margin in range(4, BODY_CONTEXT_PX + 1, 4):
        if network_is_local(module, margin):
            return margin
    return None


@dataclasses.dataclass
class _Member:
    r0: int                          # top-left corner at the field's input scale
    c0: int
    side: str = ""                   # an edge: "top", "bottom", "left" or "right"
    weight: float = 1.0              # field pixels per pixel (an edge: its free length / the strip's)


@dataclasses.dataclass
class _Region:
    """Members of one kind and shape stacked on the batch axis, so that each layer is one call."""

    kind: str                        # "crop", "corner" or "edge"
    t: Any                           # (members x B, C, h, w) activations at the current scale
    members: list[_Member]


class _Field:
    """Activations of a whole field held as regions plus the far value (see the section's comment)."""

    def __init__(self, regions: list[_Region], far: Any, height: int, width: int, zone: int = 0) -> None:
        self.regions, self.far, self.height, self.width, self.zone = regions, far, height, width, zone
        self.batch = far.shape[0]
        self.up, self.down = 1, 1  # the current scale is up / down (positions are aligned: exact)

    @classmethod
    def whole(cls, x: Any) -> "_Field":
        """The field as one region: exactly the module's computation (the probe check)."""
        return cls([_Region("crop", x, [_Member(0, 0)])], x[..., :1, :1] * 0, x.shape[-2], x.shape[-1])

    @classmethod
    def around(cls, net_in: Any, box: tuple[int, int, int, int], zone: int, air: float, strip: int) -> "_Field":
        """``net_in`` (B, C, H, W; ``air`` outside ``box``) as the crop ``box`` (aligned, snapped by
        :func:`_snap_box`), the corners and edges not inside it, and the far value."""
        b, ch, h, w = net_in.shape
        r0, r1, c0, c1 = box
        regions = [_Region("crop", net_in[..., r0:r1, c0:c1], [_Member(r0, c0)])]
        corners = [_Member(0 if top else h - zone, 0 if left else w - zone)
                   for top in (True, False) for left in (True, False)
                   if not ((r0 == 0 if top else r1 == h) and (c0 == 0 if left else c1 == w))]
        edges: dict[str, list[_Member]] = {"across": [], "down": []}
        for side, touches, length, covered in (("top", r0 == 0, w, (c0, c1)), ("bottom", r1 == h, w, (c0, c1)),
                                               ("left", c0 == 0, h, (r0, r1)), ("right", c1 == w, h, (r0, r1))):
            free = length - 2 * zone
            if touches:
                free -= max(0, min(covered[1], length - zone) - max(covered[0], zone))
            if free > 0:
                member = _Member(h - zone if side == "bottom" else 0, w - zone if side == "right" else 0, side,
                                 free / strip)
                edges["across" if side in ("top", "bottom") else "down"].append(member)
        for kind, members, rows, cols in (("corner", corners, zone, zone), ("edge", edges["across"], zone, strip),
                                          ("edge", edges["down"], strip, zone)):
            if members:
                regions.append(_Region(kind, net_in.new_full((len(members) * b, ch, rows, cols), air), members))
        return cls(regions, net_in.new_full((b, ch, 1, 1), air), h, w, zone)

    # -- geometry at the current scale ---------------------------------------------------------

    def _at(self, n: int) -> int:
        return n * self.up // self.down

    def _part(self, reg: _Region, i: int) -> Any:
        return reg.t[i * self.batch:(i + 1) * self.batch]

    def _zone_rect(self, side: str) -> tuple[int, int, int, int]:
        """The rows and columns an edge strip stands for (between the corners), current scale."""
        h, w, z = self._at(self.height), self._at(self.width), self._at(self.zone)
        return {"top": (0, z, z, w - z), "bottom": (h - z, h, z, w - z),
                "left": (z, h - z, 0, z), "right": (z, h - z, w - z, w)}[side]

    def _fill(self, out: Any, r0: int, r1: int, c0: int, c1: int) -> None:
        """Write the field's values of rows r0:r1, columns c0:c1 (current scale, inside the image)
        into ``out``: the far value, the edges' profiles, the corners and the crop."""
        out.copy_(self.far.expand_as(out))
        for reg in sorted(self.regions, key=lambda r: r.kind != "edge"):  # edges first: blocks cover them
            for i, m in enumerate(reg.members):
                t = self._part(reg, i)
                if reg.kind == "edge":
                    g0, g1, h0, h1 = self._zone_rect(m.side)
                else:
                    g0, h0 = self._at(m.r0), self._at(m.c0)
                    g1, h1 = g0 + t.shape[-2], h0 + t.shape[-1]
                rr0, rr1, cc0, cc1 = max(r0, g0), min(r1, g1), max(c0, h0), min(c1, h1)
                if rr0 >= rr1 or cc0 >= cc1:
                    continue
                if reg.kind != "edge":
                    source = t[..., rr0 - g0:rr1 - g0, cc0 - h0:cc1 - h0]
                elif m.side in ("top", "bottom"):
                    source = t[..., rr0 - g0:rr1 - g0, :1]   # constant along the edge
                else:
                    source = t[..., :1, cc0 - h0:cc1 - h0]
                out[..., rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = source

    def _padded(self, reg: _Region, pads: tuple[int, int, int, int], mode: str) -> Any:
        """``reg``'s activations padded by (left, right, top, bottom): neighbours inside the image,
        the layer's own padding beyond it (after the neighbours, as the module pads the whole image)."""
        import torch

        parts = [self._padded_member(reg, i, m, pads, mode) for i, m in enumerate(reg.members)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _padded_member(self, reg: _Region, i: int, m: _Member, pads: tuple[int, int, int, int], mode: str) -> Any:
        import torch

        left, right, top, bottom = pads
        x = self._part(reg, i)
        b, ch, h, w = x.shape
        if reg.kind == "edge":
            # one stretch of an endless edge: itself along the edge, the far field inwards
            far = self.far.to(x.dtype)
            if m.side in ("top", "bottom"):
                x = torch.cat([x[..., :1].expand(b, ch, h, left), x, x[..., -1:].expand(b, ch, h, right)], -1)
                inward = far.expand(b, ch, bottom if m.side == "top" else top, x.shape[-1])
                x = torch.cat([x, inward] if m.side == "top" else [inward, x], -2)
                outer = (0, 0, top, 0) if m.side == "top" else (0, 0, 0, bottom)
            else:
                x = torch.cat([x[..., :1, :].expand(b, ch, top, w), x, x[..., -1:, :].expand(b, ch, bottom, w)], -2)
                inward = far.expand(b, ch, x.shape[-2], right if m.side == "left" else left)
                x = torch.cat([x, inward] if m.side == "left" else [inward, x], -1)
                outer = (left, 0, 0, 0) if m.side == "left" else (0, right, 0, 0)
            return _pad_mode(x, outer, mode)
        h_img, w_img = self._at(self.height), self._at(self.width)
        r0, c0 = self._at(m.r0), self._at(m.c0)
        r1, c1 = r0 + h, c0 + w
        top_in, bottom_in = min(top, r0), min(bottom, h_img - r1)
        left_in, right_in = min(left, c0), min(right, w_img - c1)
        if top_in or bottom_in or left_in or right_in:  # one copy: the region and its neighbours' strips
            out = x.new_empty((b, ch, h + top_in + bottom_in, w + left_in + right_in))
            out[..., top_in:top_in + h, left_in:left_in + w] = x
            if top_in:
                self._fill(out[..., :top_in, :], r0 - top_in, r0, c0 - left_in, c1 + right_in)
            if bottom_in:
                self._fill(out[..., top_in + h:, :], r1, r1 + bottom_in, c0 - left_in, c1 + right_in)
            if left_in:
                self._fill(out[..., top_in:top_in + h, :left_in], r0, r1, c0 - left_in, c0)
            if right_in:
                self._fill(out[..., top_in:top_in + h, left_in + w:], r0, r1, c1, c1 + right_in)
            x = out
        return _pad_mode(x, (left - left_in, right - right_in, top - top_in, bottom - bottom_in), mode)

    # -- layers ----------------------------------------------------------------------------------

    def run(self, node: tuple) -> Any:
        """Run a plan; returns the crop's output (the first region)."""
        self._run(node)
        return self.regions[0].t

    def _run(self, node: tuple) -> None:
        import torch.nn.functional as F

        kind = node[0]
        if kind == "seq":
            for child in node[1]:
                self._run(child)
        elif kind == "res":
            saved, saved_far = [reg.t for reg in self.regions], self.far
            self._run(node[1])
            for reg, t in zip(self.regions, saved):
                reg.t = reg.t + t
            self.far = self.far + saved_far
        elif kind == "conv":
            conv, mode, pads = node[1], node[2], node[3]
            # every region padded from the layer's input before any region moves on
            inputs = [self._padded(reg, pads, mode) if any(pads) else reg.t for reg in self.regions]
            for reg, x in zip(self.regions, inputs):
                reg.t = F.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)
            # the far value: a constant in, a constant out (the taps' sum times it, plus the bias)
            self.far = F.conv2d(self.far, conv.weight.sum((2, 3), keepdim=True), conv.bias, 1, 0, 1, conv.groups)
            self.down *= conv.stride[0]
        elif kind == "norm":
            self._instance_norm(node[1])
        elif kind == "point":
            for reg in self.regions:
                reg.t = node[1](reg.t)
            self.far = node[1](self.far.clone())  # in-place activations must not touch the kept value
        elif kind == "up":
            for reg in self.regions:
                reg.t = F.interpolate(reg.t, scale_factor=float(node[1]), mode="nearest")
            self.up *= node[1]
        else:  # pragma: no cover - _plan() produces no other node
            raise UnsupportedNetwork(kind)

    def _instance_norm(self, norm: Any) -> None:
        import torch

        # Sums over the field, centred on the far value (most of the field is near it, so the float64
        # combination of the regions' float32 moments keeps the tiny variances of near-constant channels).
        far = self.far.double()
        total = self._at(self.height) * self._at(self.width)
        first = torch.zeros_like(far)
        second = torch.zeros_like(far)
        for reg in self.regions:
            # two passes over contiguous rows: as exact as torch.var_mean and ~20x faster on CPU
            flat = reg.t.float().flatten(2)
            mean = flat.mean(2, keepdim=True)
            var = torch.linalg.vector_norm(flat - mean, dim=2, keepdim=True).square() / flat.shape[-1]
            k = len(reg.members)
            weights = torch.tensor([m.weight * flat.shape[-1] for m in reg.members], dtype=torch.float64,
                                   device=far.device).view(k, 1, 1, 1, 1)
            d = mean.double().view(k, self.batch, -1, 1, 1) - far
            first += (weights * d).sum(0)
            second += (weights * (var.double().view(k, self.batch, -1, 1, 1) + d * d)).sum(0)
        mean_d = first / total
        inv = torch.rsqrt((second / total - mean_d * mean_d).clamp_min(0.0) + norm.eps)
        scale, shift = inv, -(far + mean_d) * inv
        if norm.affine:
            scale = scale * norm.weight.view(1, -1, 1, 1)
            shift = shift * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
        scale, shift = scale.float(), shift.float()
        for reg in self.regions:
            k = len(reg.members)
            reg.t = torch.addcmul(shift.repeat(k, 1, 1, 1), reg.t.float(), scale.repeat(k, 1, 1, 1))
        self.far = torch.addcmul(shift, self.far.float(), scale)


def _pad_mode(x: Any, pads: tuple[int, int, int, int], mode: str) -> Any:
    import torch.nn.functional as F

    if not any(pads):
        return x
    return F.pad(x, pads, mode="constant" if mode == "zeros" else mode)


def _union(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The smallest box (r0, r1, c0, c1) holding both."""
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])


def _snap_box(box: tuple[int, int, int, int], height: int, width: int, zone: int) -> tuple[int, int, int, int]:
    """A crop that overlaps an image-border zone is extended to that border (it then holds the zone
    itself) and made at least one zone deep there, so regions never overlap."""
    r0, r1, c0, c1 = box
    r0, c0 = (0 if r0 < zone else r0), (0 if c0 < zone else c0)
    r1, c1 = (height if r1 > height - zone else r1), (width if c1 > width - zone else c1)
    if r0 == 0:
        r1 = max(r1, zone)
    if r1 == height:
        r0 = min(r0, height - zone)
    if c0 == 0:
        c1 = max(c1, zone)
    if c1 == width:
        c0 = min(c0, width - zone)
    return r0, r1, c0, c1


class _SliceConverter:
    """Converts (B, H, W) float32 HU slices on one device; holds the per-run constants.

    ``crop`` False: the module on the field as given (the engine before the body crop). True: the far
    air made canonical and the network run on the body only, exactly (``plan``; None runs the module
    on the canonical field), the change outside the kept box zero: air stays the anchor there.
    """

    def __init__(self, module: Any, card: ModelCard, dev: Any, amp_dtype: Any, net_hw: tuple[int, int] | None,
                 crop: bool = False, plan: tuple | None = None, keep_px: int = 0, local: bool = False,
                 context_px: int = BODY_CONTEXT_PX):
        import torch

        self.module, self.card, self.dev, self.amp_dtype, self.net_hw = module, card, dev, amp_dtype, net_hw
        self.a, self.b = card.hu_to_net_scale()
        self.lo, self.hi = card.hu_window
        self.below_gain = float(card.outside_window.get("below_gain", 1.0))
        self.above_gain = float(card.outside_window.get("above_gain", 1.0))
        self.calibration = card.anchor()
        self.bound = float(card.max_change_hu) if card.bounded else None
        self.crop, self.plan, self.keep_px, self.local = crop, plan, keep_px, local
        self.context_px = context_px  # local modules: their measured receptive field; regions: BODY_CONTEXT_PX
        self.align = _downsampling(plan) if plan is not None else STRIDE
        # canonical air: what the network is given for -1000 HU after the anchor and the window
        air_hu = float(self.anchor(torch.tensor([-1000.0])).clamp(self.lo, self.hi)[0])
        self.air = air_hu * self.a + self.b
        self.max_boxes = 0       # most kept boxes in one batch (local modules: body, couch, ...)
        self.pixels = 0          # network input pixels over the run (regions, or whole fields)
        self.field_pixels = 0    # ... and what whole fields would have been

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

    def _autocast(self) -> Any:
        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.dev.type, dtype=self.amp_dtype)

    def _keep_boxes(self, anchor: Any, padded_hw: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        """Boxes (rows and columns of the padded grid) around the batch's voxels above the body
        threshold, grown by ``keep_px``; [] when the batch holds none (air only). A local module gets
        one box per group of separate parts (the body, the couch, an arm) whose crops with their context
        would cost more apart than together, at most :data:`BODY_CROP_MAX_BOXES`; the regions (instance
        norms) get one box around everything."""
        above = (anchor[:, 0] > BODY_THRESHOLD_HU).any(0).cpu().numpy()
        (gh, gw), (hp, wp), k = anchor.shape[-2:], padded_hw, self.keep_px
        parts = ndimage.label(above)[0] if self.local else above.astype(np.int8)  # local: one label per part
        boxes = [(max(0, r.start - k), min(gh, r.stop + k), max(0, c.start - k), min(gw, c.stop + k))
                 for r, c in ndimage.find_objects(parts)]
        merging = len(boxes) > 1
        while merging:
            for i, j in itertools.combinations(range(len(boxes)), 2):
                union = _union(boxes[i], boxes[j])
                # (boxes may overlap: each crop is exact on the canonical field, the overlap twice)
                if self._crop_pixels(union, padded_hw) <= (self._crop_pixels(boxes[i], padded_hw)
                                                           + self._crop_pixels(boxes[j], padded_hw)):
                    boxes[i] = union
                    del boxes[j]
                    break
            else:
                merging = False
        if len(boxes) > BODY_CROP_MAX_BOXES:
            boxes = [functools.reduce(_union, boxes)]
        self.max_boxes = max(self.max_boxes, len(boxes))
        # touching the grid's end: the stride padding beyond it mirrors kept voxels, so keep it too
        return [(r0, (hp if r1 == gh else r1), c0, (wp if c1 == gw else c1)) for r0, r1, c0, c1 in boxes]

    def _crop(self, box: tuple[int, int, int, int], padded_hw: tuple[int, int]) -> tuple[int, int, int, int]:
        """``box`` with its context margin, on multiples of the alignment, inside the padded grid."""
        (hp, wp), a, ctx = padded_hw, self.align, self.context_px
        r0, r1, c0, c1 = box
        return (max(0, (r0 - ctx) // a * a), min(hp, -(-(r1 + ctx) // a) * a),
                max(0, (c0 - ctx) // a * a), min(wp, -(-(c1 + ctx) // a) * a))

    def _crop_pixels(self, box: tuple[int, int, int, int], padded_hw: tuple[int, int]) -> int:
        r0, r1, c0, c1 = self._crop(box, padded_hw)
        return (r1 - r0) * (c1 - c0)

    def _canonical(self, net_in: Any, boxes: list[tuple[int, int, int, int]]) -> Any:
        """``net_in`` with the air value outside ``boxes``."""
        canonical = net_in.new_full(net_in.shape, self.air)
        for r0, r1, c0, c1 in boxes:
            canonical[..., r0:r1, c0:c1] = net_in[..., r0:r1, c0:c1]
        return canonical

    def _network_on_body(self, net_in: Any, boxes: list[tuple[int, int, int, int]]) -> tuple[list, bool, Any]:
        """The module's output on ``net_in`` with canonical air outside ``boxes``, in each kept box;
        whether it came from crops or regions (else from the module on the whole canonical field); and
        that canonical field."""
        hp, wp = net_in.shape[-2:]
        canonical = self._canonical(net_in, boxes)
        a, zone = self.align, BORDER_ZONE_PX
        self.field_pixels += net_in.shape[0] * hp * wp
        small = hp < 2 * zone + a or wp < 2 * zone + a
        if self.plan is not None and not small:  # one box: see _keep_boxes
            (r0, r1, c0, c1), = boxes
            box = _snap_box(self._crop(boxes[0], (hp, wp)), hp, wp, zone)
            field = _Field.around(canonical, box, zone, self.air, a)
            pixels = sum(reg.t.shape[-2] * reg.t.shape[-1] * len(reg.members) for reg in field.regions)
            if pixels <= BODY_CROP_MAX_FRACTION * hp * wp:
                self.pixels += net_in.shape[0] * pixels
                with self._autocast():
                    y = field.run(self.plan)
                return [y[..., r0 - box[0]:r1 - box[0], c0 - box[2]:c1 - box[2]].float()], True, canonical
        if self.local:  # no statistics over the field: the module on each box with its context margin
            crops = [self._crop(b, (hp, wp)) for b in boxes]
            pixels = sum((q1 - q0) * (d1 - d0) for q0, q1, d0, d1 in crops)
            if pixels <= BODY_CROP_MAX_FRACTION * hp * wp:
                self.pixels += net_in.shape[0] * pixels
                ys = []
                with self._autocast():
                    for (r0, r1, c0, c1), (q0, q1, d0, d1) in zip(boxes, crops):
                        y = self.module(canonical[..., q0:q1, d0:d1])
                        ys.append(y[..., r0 - q0:r1 - q0, c0 - d0:c1 - d0].float())
                return ys, True, canonical
        self.pixels += net_in.shape[0] * hp * wp
        with self._autocast():
            y = self.module(canonical)
        return [y[..., r0:r1, c0:c1].float() for r0, r1, c0, c1 in boxes], False, canonical

    def _change(self, y: Any, net_in: Any, anchor: Any, clipped: Any) -> Any:
        """The change in HU from the network's output ``y`` for the input ``net_in`` (same region)."""
        if self.bound is not None:
            # The bound is the engine's, not the weights': t is clamped to [-1, 1] whatever the file holds,
            # and resampling (convex weights) cannot leave [-bound, bound] either.
            return self.bound * y.clamp(-1.0, 1.0)
        # Written as input + change so that a generator returning its input changes nothing, bit for
        # bit; algebraically it is y_HU + gain * (x - clip(x)).
        excess = anchor - clipped
        change = (y - net_in) / self.a
        return (change + (self.below_gain - 1.0) * excess.clamp(max=0.0)
                + (self.above_gain - 1.0) * excess.clamp(min=0.0))

    def __call__(self, slices_hu: np.ndarray, check: bool = False) -> np.ndarray | tuple[np.ndarray, float | None]:
        """Converted slices; with ``check`` (crop mode) also the largest difference (HU) in the first
        slice's body between the crop and the module on the whole canonical field (None: no region
        ran, nothing to check)."""
        import torch

        x = torch.from_numpy(slices_hu).to(self.dev).unsqueeze(1)  # (B, 1, H, W) HU
        h, w = x.shape[-2:]
        x_net_grid = self._resize(x, self.net_hw) if self.net_hw else x
        anchor = self.anchor(x_net_grid)
        clipped = anchor.clamp(self.lo, self.hi)
        net_in = self._pad(clipped * self.a + self.b)
        gh, gw = clipped.shape[-2:]
        check_hu = None
        if not self.crop:
            self.pixels += net_in.shape[0] * net_in.shape[-2] * net_in.shape[-1]
            self.field_pixels += net_in.shape[0] * net_in.shape[-2] * net_in.shape[-1]
            with self._autocast():
                y = self.module(net_in)
            change = self._change(y[..., :gh, :gw].float(), net_in[..., :gh, :gw], anchor, clipped)
        else:
            change = torch.zeros_like(anchor)
            boxes = self._keep_boxes(anchor, net_in.shape[-2:])
            if boxes:  # else air only: the anchor, untouched
                ys, cropped, canonical = self._network_on_body(net_in, boxes)
                kept = []
                for (r0, r1, c0, c1), y in zip(boxes, ys):
                    g1, h1 = min(r1, gh), min(c1, gw)
                    y = y[..., :g1 - r0, :h1 - c0]
                    part = (..., slice(r0, g1), slice(c0, h1))
                    change[part] = self._change(y, net_in[part], anchor[part], clipped[part])
                    kept.append(y[:1])
                if check and cropped:
                    check_hu = self._check(canonical[:1], boxes, kept, anchor[:1])
        if self.net_hw:
            change = self._resize(change, (h, w))
            if self.bound is not None:
                change = change.clamp(-self.bound, self.bound)
        out = (self.anchor(x) if self.net_hw else anchor) + change
        out = out[:, 0].cpu().numpy()
        return (out, check_hu) if check else out

    def _check(self, canonical: Any, boxes: list[tuple[int, int, int, int]], ys: list, anchor: Any) -> float:
        """Largest |crop - whole canonical field| (HU of the change) over the body voxels of one slice."""
        with self._autocast():
            whole = self.module(canonical).float()
        scale = self.bound if self.bound is not None else 1.0 / self.a
        worst = 0.0
        for (r0, _, c0, _), y in zip(boxes, ys):
            part = (..., slice(r0, r0 + y.shape[-2]), slice(c0, c0 + y.shape[-1]))
            w = whole[part]
            if self.bound is not None:
                y, w = y.clamp(-1.0, 1.0), w.clamp(-1.0, 1.0)
            body = anchor[part] > BODY_THRESHOLD_HU
            if bool(body.any()):
                worst = max(worst, float(((y - w).abs() * scale)[body].max()))
        return worst


def _is_oom(exc: BaseException) -> bool:
    import torch

    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", RuntimeError)
    return isinstance(exc, oom_type) or "out of memory" in str(exc).lower()


def enhance(volume: Volume, model: LoadedModel | str | os.PathLike, *, device: Any = "auto", batch_size: int | None = None,
            precision: str = "auto", resample: bool = True, spacing_tolerance: float = 0.05,
            body_crop: bool = EnhanceSettings.body_crop, progress: StepProgress | None = None,
            should_cancel: ShouldCancel | None = None) -> EnhanceResult:
    """Convert an MVCT volume (HU) to a kV-like volume (HU) with the same geometry.

    ``model`` is a :class:`LoadedModel` or a model file path. ``batch_size`` None picks
    :data:`DEFAULT_BATCH` for the device. ``progress(done, total)`` is called
    after each batch (and once with 0 at the start); ``should_cancel()`` is checked before each
    batch and a True makes the run raise :class:`EnhanceCancelled`. On CUDA out-of-memory the batch
    is halved, then the run falls back to the CPU; both are reported in ``warnings``.

    ``body_crop``: the air farther than :data:`BODY_KEEP_MM` from the body's box is made canonical
    and the network runs on the body only, with the whole field's result (see the body-crop section;
    a spot check on the first cropped batch falls back to the whole field beyond
    :data:`BODY_CROP_CHECK_HU`); outside the kept box the output is the anchor. False: the network on
    every slice's whole field as given.
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
    plan, why_not = plan_network(module) if body_crop else (None, "off")
    context = local_context_px(module) if body_crop and plan is None else None
    local = context is not None
    grid_spacing = min(target) if resampled else min(spacing)
    keep_px = math.ceil(BODY_KEEP_MM / grid_spacing) if body_crop else 0

    def converter_on(d: Any, amp: Any) -> _SliceConverter:
        return _SliceConverter(loaded.module.to(d), card, d, amp, net_hw, crop=body_crop, plan=plan, keep_px=keep_px,
                              local=local, context_px=context or BODY_CONTEXT_PX)

    converter = converter_on(dev, amp_dtype)
    out = np.empty((n, h, w), dtype=np.float32)
    bs = batch_size or DEFAULT_BATCH.get(dev.type, 2)
    check_hu: float | None = None
    pixels = field_pixels = boxes_max = 0
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
                if check_hu is None and (converter.plan is not None or converter.local):
                    converted, check_hu = converter(batch, check=True)
                    if check_hu is not None and check_hu > BODY_CROP_CHECK_HU:  # not exact here: whole fields
                        notes.append(f"the body crop differed from the whole field by {check_hu:.2f} HU in the body "
                                     f"(more than {BODY_CROP_CHECK_HU:g}): the network ran on whole fields")
                        plan = converter.plan = None
                        local = converter.local = False
                        converted = converter(batch)
                else:
                    converted = converter(batch)
                out[start:stop] = converted[:, top:top + h, left:left + w]
            except Exception as exc:
                if dev.type != "cuda" or not _is_oom(exc):
                    raise
                torch.cuda.empty_cache()
                if bs > 1:
                    bs = max(1, bs // 2)
                    notes.append(f"CUDA out of memory: batch size reduced to {bs}")
                else:
                    dev = torch.device("cpu")
                    pixels, field_pixels = pixels + converter.pixels, field_pixels + converter.field_pixels
                    boxes_max = max(boxes_max, converter.max_boxes)
                    converter = converter_on(dev, None)
                    notes.append("CUDA out of memory even with batch size 1: continued on the CPU")
                log.warning(notes[-1])
                continue
            start = stop
            if progress:
                progress(start, n)
    pixels, field_pixels = pixels + converter.pixels, field_pixels + converter.field_pixels

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
    params["body_crop"] = {
        "enabled": bool(body_crop), "keep_mm": BODY_KEEP_MM if body_crop else None,
        "regions": plan is not None, "why_not_regions": why_not if body_crop and plan is None else None,
        "local_window": local, "context_px": BODY_CONTEXT_PX if plan is not None else (context if local else None),
        "border_zone_px": BORDER_ZONE_PX if plan is not None else None,
        "check_max_hu": None if check_hu is None else round(check_hu, 4),
        "network_pixels_fraction": round(pixels / max(field_pixels, 1), 4),
        "boxes_max": max(boxes_max, converter.max_boxes) if body_crop else None}
    for note in notes:
        log.warning(note)
    return EnhanceResult(volume.with_array(result, enhanced_by=card.name), notes, seconds, str(dev), params)
