"""The results table: one row per (metric, image) with its summary inside the body mask."""

from __future__ import annotations

import json
from typing import Any

import vtk

from MVCTEnhanceLib.engine.files import json_default

COLUMNS = (("Metric", "string"), ("Image", "string"), ("Mean", "double"), ("Median", "double"),
           ("P95", "double"), ("Voxels", "int"), ("Unit", "string"))
DIG_UNIT = "HU^2/mm^2"
TISSUE_CHANGE_UNIT = "fraction of body"


def summaryRows(summaries: dict[str, Any]) -> list[tuple]:
    """Rows (metric, image, mean, median, p95, n_voxels, unit) from the job's metric summaries
    (``engine.job.Outcome.metrics``), in reading order."""
    rows = []
    nselfssim = summaries.get("nselfssim", {})
    for key, label in (("input", "MVCT (input)"), ("output", "enhanced"), ("planning_ct", "planning CT")):
        if key in nselfssim:
            rows.append(_row("NSelfSSIM", label, nselfssim[key], ""))
    dig = summaries.get("dig", {})
    if "output" in dig:
        rows.append(_row("DIG", "enhanced vs MVCT", dig["output"], DIG_UNIT))
    tissue = summaries.get("tissue_change", {}).get("output")
    if tissue:
        # Mean of the 0/1 map inside the body = the fraction of the body whose tissue class changed;
        # Voxels = how many changed (their volume in cm^3 is in the table's summaries attribute).
        rows.append(("Tissue change", "enhanced vs MVCT", float(tissue["fraction"]), float("nan"), float("nan"),
                     int(tissue["n_voxels"]), TISSUE_CHANGE_UNIT))
    return rows


def _row(metric: str, image: str, summary: dict[str, Any], unit: str) -> tuple:
    def num(key: str) -> float:
        value = summary.get(key)
        return float("nan") if value is None else float(value)

    return (metric, image, num("mean"), num("median"), num("p95"), int(summary.get("n_voxels", 0)), unit)


def fillTableNode(tableNode: Any, rows: list[tuple], details: dict[str, Any]) -> None:
    """Replace the table's contents with ``rows``; full summaries (per-slice means too) go in an attribute."""
    table = vtk.vtkTable()
    arrays = []
    for name, kind in COLUMNS:
        array = {"string": vtk.vtkStringArray, "double": vtk.vtkDoubleArray, "int": vtk.vtkIntArray}[kind]()
        array.SetName(name)
        array.SetNumberOfValues(len(rows))
        arrays.append(array)
        table.AddColumn(array)
    for r, row in enumerate(rows):
        for array, value in zip(arrays, row):
            array.SetValue(r, value)
    tableNode.SetAndObserveTable(table)
    if hasattr(tableNode, "SetUseColumnTitleAsColumnHeader"):  # Slicer >= 5.10 name
        tableNode.SetUseColumnTitleAsColumnHeader(True)
        for name, _ in COLUMNS:
            tableNode.SetColumnTitle(name, name)
    else:
        tableNode.SetUseColumnNameAsColumnHeader(True)
    tableNode.SetLocked(True)  # results, not an input form
    for name, _ in COLUMNS:
        if name == "P95":
            tableNode.SetColumnDescription(name, "95th percentile inside the body mask")
        elif name in ("Mean", "Median"):
            tableNode.SetColumnDescription(name, f"{name.lower()} inside the body mask")
    tableNode.SetAttribute("MVCTEnhance.Summaries", json.dumps(details, default=json_default))


def tableRows(tableNode: Any) -> list[tuple]:
    """The rows back as Python tuples (used by tests and the self-test)."""
    table = tableNode.GetTable()
    rows = []
    for r in range(table.GetNumberOfRows()):
        rows.append(tuple(table.GetValue(r, c).ToString() if kind == "string"
                          else (table.GetValue(r, c).ToDouble() if kind == "double" else table.GetValue(r, c).ToInt())
                          for c, (_, kind) in enumerate(COLUMNS)))
    return rows
