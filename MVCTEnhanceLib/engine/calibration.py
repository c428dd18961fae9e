"""The physics anchor: a monotone piecewise-linear MV HU -> kV HU calibration.

At megavoltage energies the photoelectric effect is gone, so the same tissue has other HU than at
kV: bone contrast roughly halves and fat moves towards water. Most of the MV -> kV conversion is
therefore a known, monotone curve. A bounded-change model (:mod:`.modelcard`) adds at most
``max_change_hu`` to the calibrated MVCT; the calibration itself is plain data in the model card.

Curves come from

- tissue points (:data:`ICRU_TISSUE_POINTS`: ICRU Report 44 tissues with NIST XCOM cross sections,
  70 keV vs 1 MeV, as quoted by Ozaki, Kaji et al., Med. Phys. 49(6), 2022), the default; or
- a clinic's own image-value-to-density tables (IVDT): every radiotherapy department commissions one
  for its MVCT and one for its planning CT. Composing MV HU -> density -> kV HU gives the curve
  (:func:`from_ivdt`).

Beyond the last point on either side the end segment's slope continues (dense bone and enamel are
Compton-dominated at both energies, so attenuation stays proportional to electron density). Below
-1000 HU (padding outside a reconstruction circle) the value is kept: air stays air.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import InputError

#: (MV HU at 1 MeV, kV HU at ~70 keV), lowest first: air and water by definition; lung, adipose,
#: skeletal muscle and cortical bone from ICRU Report 44 compositions with NIST XCOM cross sections.
ICRU_TISSUE_POINTS: tuple[tuple[float, float], ...] = (
    (-1000.0, -1000.0),  # air
    (-742.0, -741.0),    # lung
    (-49.0, -76.0),      # adipose
    (0.0, 0.0),          # water
    (40.0, 43.0),        # skeletal muscle
    (783.0, 1561.0),     # cortical bone
)
CALIBRATION_SCHEMA = "mvctenhance-calibration"


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Knots (``mv_hu[i]`` -> ``kv_hu[i]``), both strictly increasing; ``source`` says where they came from."""

    mv_hu: tuple[float, ...]
    kv_hu: tuple[float, ...]
    source: str

    def __post_init__(self) -> None:
        mv = tuple(float(v) for v in self.mv_hu)
        kv = tuple(float(v) for v in self.kv_hu)
        if len(mv) != len(kv) or len(mv) < 2:
            raise InputError(f"a calibration needs at least two (MV HU, kV HU) points of equal count, got "
                             f"{len(mv)} MV and {len(kv)} kV values")
        if not all(math.isfinite(v) for v in mv + kv):
            raise InputError("calibration points must be finite numbers")
        if any(b <= a for a, b in zip(mv, mv[1:])) or any(b <= a for a, b in zip(kv, kv[1:])):
            raise InputError("calibration points must increase strictly in both MV and kV HU (a monotone curve): "
                             f"MV {list(mv)}, kV {list(kv)}")
        object.__setattr__(self, "mv_hu", mv)
        object.__setattr__(self, "kv_hu", kv)

    # -- the curve ---------------------------------------------------------------------------------

    def _slopes(self) -> tuple[float, float]:
        mv, kv = self.mv_hu, self.kv_hu
        return (kv[1] - kv[0]) / (mv[1] - mv[0]), (kv[-1] - kv[-2]) / (mv[-1] - mv[-2])

    def apply(self, hu: np.ndarray) -> np.ndarray:
        """kV-like HU of MV ``hu`` (float32, same shape)."""
        return _piecewise(np.asarray(hu, dtype=np.float64), self.mv_hu, self.kv_hu, self._slopes()).astype(np.float32)

    def invert(self, hu: np.ndarray) -> np.ndarray:
        """MV HU of kV ``hu``: the inverse curve (the kV -> MV generator's anchor in training)."""
        lo, hi = self._slopes()
        return _piecewise(np.asarray(hu, dtype=np.float64), self.kv_hu, self.mv_hu, (1 / lo, 1 / hi)).astype(np.float32)

    def apply_torch(self, hu: Any, inverse: bool = False) -> Any:
        """The curve on a torch tensor (any device; differentiable), for inference and training.

        Written as a sum of hinges, ``y0 + m0 (x - x0) + sum_i (m_i - m_(i-1)) max(x - x_i, 0)``: the
        curve is continuous and extrapolates with its end slopes, so this is the same function as
        :meth:`apply` (to float32 rounding, ~1e-4 HU) at a few elementwise passes instead of a search
        and gathers (~8x faster on CPU)."""
        xs, ys = (self.kv_hu, self.mv_hu) if inverse else (self.mv_hu, self.kv_hu)
        slopes = [(ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i]) for i in range(len(xs) - 1)]
        out = (hu - xs[0]).mul_(slopes[0]).add_(ys[0])
        for knot, before, after in zip(xs[1:-1], slopes, slopes[1:]):
            out = out.add_((hu - knot).clamp_(min=0.0), alpha=after - before)
        return out.where(hu >= -1000.0, hu) if xs[0] <= -1000.0 else out  # below -1000 HU: kept (air)

    # -- records -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"schema": CALIBRATION_SCHEMA, "mv_hu": list(self.mv_hu), "kv_hu": list(self.kv_hu),
                "source": self.source, "extrapolation": "end segments' slopes; below -1000 HU kept (air)"}

    @classmethod
    def from_dict(cls, d: Any, what: str = "calibration") -> "Calibration":
        if not isinstance(d, dict) or not isinstance(d.get("mv_hu"), list) or not isinstance(d.get("kv_hu"), list):
            raise InputError(f"{what} must be an object with lists 'mv_hu' and 'kv_hu'")
        try:
            return cls(tuple(d["mv_hu"]), tuple(d["kv_hu"]), str(d.get("source", "")))
        except (TypeError, ValueError):
            raise InputError(f"{what}: 'mv_hu' and 'kv_hu' must hold numbers") from None


def _piecewise(x: np.ndarray, xs: Sequence[float], ys: Sequence[float], slopes: tuple[float, float]) -> np.ndarray:
    out = np.interp(x, xs, ys)
    below, above = x < xs[0], x > xs[-1]
    out[below] = ys[0] + slopes[0] * (x[below] - xs[0])
    out[above] = ys[-1] + slopes[1] * (x[above] - xs[-1])
    if xs[0] <= -1000.0:
        air = x < -1000.0
        out[air] = x[air]
    return out


def tissue_calibration() -> Calibration:
    """The default anchor: the ICRU tissue points at 1 MeV (TomoTherapy's ~3.5 MV beam) and ~70 keV."""
    return Calibration(tuple(p[0] for p in ICRU_TISSUE_POINTS), tuple(p[1] for p in ICRU_TISSUE_POINTS),
                       "ICRU Report 44 tissues, NIST XCOM, 1 MeV -> 70 keV (Ozaki, Kaji et al., Med. Phys. 2022)")


# -- from a clinic's tables ------------------------------------------------------------------------

def read_ivdt(path: str | os.PathLike, what: str) -> list[tuple[float, float]]:
    """(HU, density) rows of an IVDT file: CSV or whitespace-separated, '#' comments, an optional header."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} '{p}' does not exist")
    rows: list[tuple[float, float]] = []
    text = p.read_text(encoding="utf-8", errors="replace")
    dialect = "excel" if "," in text else "excel-tab"
    for n, raw in enumerate(csv.reader(text.splitlines(), dialect=dialect), start=1):
        cells = [c for part in raw for c in part.split()] if dialect != "excel" else [c.strip() for c in raw]
        cells = [c for c in cells if c]
        if not cells or cells[0].startswith("#"):
            continue
        try:
            hu, density = float(cells[0]), float(cells[1])
        except (ValueError, IndexError):
            if rows:  # a header is allowed only before the data
                raise InputError(f"{what} '{p}', line {n}: expected 'HU, density', got {','.join(raw)!r}") from None
            continue
        rows.append((hu, density))
    if len(rows) < 2:
        raise InputError(f"{what} '{p}' holds {len(rows)} (HU, density) rows; an IVDT needs at least two")
    rows.sort()
    if any(b[1] <= a[1] for a, b in zip(rows, rows[1:])):
        raise InputError(f"{what} '{p}': density must increase strictly with HU (a monotone table)")
    return rows


def from_ivdt(mv_table: Sequence[tuple[float, float]], kv_table: Sequence[tuple[float, float]],
              source: str = "IVDTs") -> Calibration:
    """MV HU -> density (the MVCT's IVDT) -> kV HU (the planning CT's IVDT, inverted).

    The knots are the MV table's rows whose density lies inside the kV table's range, plus the MV HU
    of every kV row inside the MV table's range, so no point of either table is lost.
    """
    mv = np.asarray(mv_table, dtype=np.float64)
    kv = np.asarray(kv_table, dtype=np.float64)
    lo, hi = max(mv[0, 1], kv[0, 1]), min(mv[-1, 1], kv[-1, 1])
    if not lo < hi:
        raise InputError("the two IVDTs share no density range: check that both map HU to the same density "
                         "(relative electron density or mass density, not one of each)")
    densities = np.unique(np.concatenate([mv[:, 1], kv[:, 1]]))
    densities = densities[(densities >= lo) & (densities <= hi)]
    mv_hu = np.interp(densities, mv[:, 1], mv[:, 0])
    kv_hu = np.interp(densities, kv[:, 1], kv[:, 0])
    return Calibration(tuple(mv_hu), tuple(kv_hu), source)
