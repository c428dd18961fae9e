"""Rigid registration of the MVCT to the planning CT (SimpleITK, Mattes mutual information).

MV and kV CT share anatomy but not intensities, so the similarity is mutual information. The result
is a :class:`RigidTransform` in patient coordinates (LPS, mm) that maps a point of the MVCT onto the
same anatomy in the planning CT::

    x_planning = R @ x_mvct + t

which is what a viewer applies to the MVCT to show it over the planning CT (Slicer: a linear
transform node, after the LPS -> RAS change of sign of the first two axes). ITK's own transform
(fixed planning CT -> moving MVCT, the inverse) is kept in the JSON form for reproducibility.

The search starts from the scanners' own patient coordinates (identity: MVCT and planning CT of one
patient share a frame of reference up to the set-up error) and rotates about the MVCT's centre.
SimpleITK is imported inside the functions (the Slicer module imports the engine at start-up).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from .errors import InputError
from .volume import Volume, volume_to_image

#: Intensities outside this range (HU) are clipped before the metric: metal and air padding values
#: would otherwise take histogram bins from anatomy.
HU_CLIP = (-1000.0, 2000.0)
METHOD = "rigid (Euler 3D), Mattes mutual information, multi-resolution gradient descent (SimpleITK)"


@dataclasses.dataclass(frozen=True)
class RigidTransform:
    """``x_fixed = rotation @ x_moving + translation`` in LPS mm (moving: MVCT, fixed: planning CT)."""

    rotation: tuple[tuple[float, float, float], ...]
    translation: tuple[float, float, float]
    metric: float | None = None
    iterations: int | None = None
    stop: str = ""
    itk_parameters: tuple[float, ...] = ()        # Euler3DTransform fixed -> moving: angles (rad), translation
    itk_fixed_parameters: tuple[float, ...] = ()  # its centre of rotation (LPS mm) and a flag

    @property
    def matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix (LPS) taking MVCT points to planning CT points."""
        m = np.eye(4)
        m[:3, :3] = np.asarray(self.rotation, dtype=np.float64)
        m[:3, 3] = np.asarray(self.translation, dtype=np.float64)
        return m

    @property
    def rotation_deg(self) -> float:
        """The rotation's angle about its axis, degrees."""
        r = np.asarray(self.rotation, dtype=np.float64)
        return float(math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(r) - 1.0) / 2.0)))))

    def apply(self, points_lps: Any) -> np.ndarray:
        p = np.asarray(points_lps, dtype=np.float64)
        return p @ np.asarray(self.rotation).T + np.asarray(self.translation)

    def inverse(self) -> "RigidTransform":
        r = np.asarray(self.rotation, dtype=np.float64).T
        return RigidTransform(_rows(r), tuple(float(v) for v in -r @ np.asarray(self.translation)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": METHOD, "fixed": "planning CT", "moving": "MVCT", "space": "LPS",
            "convention": "x_planning = matrix @ [x_mvct, 1] (mm)",
            "matrix_mvct_to_planning": [list(row) for row in self.matrix.tolist()],
            "rotation_deg": round(self.rotation_deg, 6), "translation_mm": list(self.translation),
            "metric": self.metric, "iterations": self.iterations, "stop": self.stop,
            "itk": {"transform": "Euler3DTransform", "direction": "planning CT (fixed) -> MVCT (moving)",
                    "parameters": list(self.itk_parameters), "fixed_parameters": list(self.itk_fixed_parameters)},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RigidTransform":
        try:
            m = np.asarray(d["matrix_mvct_to_planning"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise InputError("a registration record needs 'matrix_mvct_to_planning' (4x4)") from None
        if m.shape != (4, 4) or not np.allclose(m[3], [0, 0, 0, 1]):
            raise InputError(f"'matrix_mvct_to_planning' must be a 4x4 homogeneous matrix, got shape {m.shape}")
        r = m[:3, :3]
        if not np.allclose(r @ r.T, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0:
            raise InputError("'matrix_mvct_to_planning' is not a rigid transform (rotation and translation only)")
        itk = d.get("itk") or {}
        return cls(_rows(r), tuple(float(v) for v in m[:3, 3]), d.get("metric"), d.get("iterations"),
                   str(d.get("stop", "")), tuple(itk.get("parameters", ())), tuple(itk.get("fixed_parameters", ())))


def _rows(r: np.ndarray) -> tuple[tuple[float, float, float], ...]:
    return tuple(tuple(float(v) for v in row) for row in np.asarray(r))


def _image(volume: Volume) -> Any:
    clipped = volume.with_array(np.clip(volume.array, *HU_CLIP).astype(np.float32))
    return volume_to_image(clipped)


def _centre(volume: Volume) -> np.ndarray:
    shape_ijk = np.asarray(volume.array.shape[::-1], dtype=np.float64)
    centre_ijk = (shape_ijk - 1.0) / 2.0
    return np.asarray(volume.origin) + volume.direction_matrix @ (centre_ijk * np.asarray(volume.spacing))


def register_rigid(planning: Volume, mvct: Volume, *, iterations: int = 300, sampling: float = 0.25,
                   seed: int = 0, shrink: tuple[int, ...] = (4, 2, 1),
                   smoothing_mm: tuple[float, ...] = (2.0, 1.0, 0.0)) -> RigidTransform:
    """Register ``mvct`` (moving) rigidly to ``planning`` (fixed); see the module.

    ``sampling`` is the fraction of fixed-image voxels the metric samples (seeded: reproducible);
    ``shrink``/``smoothing_mm`` the resolution levels. Raises InputError when the images do not
    overlap enough for the metric.
    """
    import SimpleITK as sitk

    for volume, what in ((planning, "planning CT"), (mvct, "MVCT")):
        if volume.array.ndim != 3 or min(volume.array.shape) < 2:
            raise InputError(f"registration needs a 3D {what} with at least 2 voxels along each axis")
    if len(shrink) != len(smoothing_mm):
        raise InputError("one smoothing value per resolution level")
    fixed, moving = _image(planning), _image(mvct)
    initial = sitk.Euler3DTransform()
    initial.SetCenter([float(v) for v in _centre(mvct)])  # identity: the scanners' patient coordinates
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=48)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(float(sampling), int(seed))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-4, numberOfIterations=int(iterations),
                                                   relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    shrink = tuple(max(1, min(int(s), min(fixed.GetSize()) // 4 or 1)) for s in shrink)
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel([float(s) for s in smoothing_mm])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    try:
        result = method.Execute(fixed, moving)
    except RuntimeError as exc:
        text = str(exc)
        if "Too many samples map outside moving image buffer" in text or "samples" in text.lower():
            raise InputError("registration failed: the MVCT and the planning CT hardly overlap in patient "
                             "coordinates (another patient, or a different frame of reference?)") from None
        raise InputError(f"registration failed: {text.strip().splitlines()[-1]}") from None
    euler = sitk.Euler3DTransform(sitk.CompositeTransform(result).GetNthTransform(0)) \
        if result.GetName() == "CompositeTransform" else sitk.Euler3DTransform(result)
    r = np.asarray(euler.GetMatrix(), dtype=np.float64).reshape(3, 3)
    c = np.asarray(euler.GetCenter(), dtype=np.float64)
    t = np.asarray(euler.GetTranslation(), dtype=np.float64)
    offset = c + t - r @ c  # ITK: x_moving = R (x_fixed - c) + c + t
    to_moving = RigidTransform(_rows(r), tuple(float(v) for v in offset))
    mvct_to_planning = to_moving.inverse()
    return dataclasses.replace(mvct_to_planning, metric=float(method.GetMetricValue()),
                               iterations=int(method.GetOptimizerIteration()),
                               stop=method.GetOptimizerStopConditionDescription(),
                               itk_parameters=tuple(float(v) for v in euler.GetParameters()),
                               itk_fixed_parameters=tuple(float(v) for v in euler.GetFixedParameters()))
