"""Options of ``mvct-enhance enhance`` that the Slicer module's background job uses (and users may):
the tissue-change map file, convert-only, and machine-readable progress."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import ROTATED_DIRECTION, phantom_array
from test_cli import _run
from MVCTEnhanceLib.engine.volume import Volume, read_volume, write_volume

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = REPO / "Resources" / "models" / "mvctenhance-tiny-test.pt"


@pytest.fixture
def mvct_file(tmp_path):
    path = tmp_path / "mvct.nrrd"
    write_volume(Volume(phantom_array((4, 40, 36), seed=2), spacing=(1.0, 1.0, 3.0), origin=(-20, -24, 5),
                        direction=ROTATED_DIRECTION), path)
    return path


def test_tissue_change_map_file_holds_the_jobs_map_and_progress_is_json_lines(tmp_path, capsys, mvct_file):
    code, out, err = _run(capsys, "enhance", mvct_file, "-o", tmp_path / "e.nrrd", "--tissue-change",
                          tmp_path / "t.nrrd", "--report", tmp_path / "r.json", "--model", TINY_MODEL,
                          "--device", "cpu", "--progress", "json")
    assert code == 0, err
    tissue = read_volume(tmp_path / "t.nrrd", check_hu=False)
    assert tissue.same_geometry(read_volume(mvct_file))
    assert set(np.unique(tissue.array)) <= {0.0, 1.0}
    summary = json.loads((tmp_path / "r.json").read_text())["metrics"]["tissue_change"]["output"]
    assert int(tissue.array.sum()) == summary["n_voxels"] > 0
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert events and all(e["event"] == "progress" for e in events)
    stages = {e["stage"] for e in events}
    assert stages == {"enhance", "metrics"}
    last = {e["stage"]: e for e in events}
    assert all(e["done"] == e["total"] for e in last.values())
    assert "\r" not in err  # no progress bars


def test_no_metrics_converts_only_and_refuses_map_outputs(tmp_path, capsys, mvct_file):
    code, out, err = _run(capsys, "enhance", mvct_file, "--output-dir", tmp_path, "--model", TINY_MODEL,
                          "--device", "cpu", "--no-metrics", "--progress", "none")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mvct.nrrd", "mvct_enhanced.nrrd", "mvct_report.json"]
    assert json.loads((tmp_path / "mvct_report.json").read_text())["metrics"] == {}
    assert err.strip() == ""
    code, out, err = _run(capsys, "enhance", mvct_file, "-o", tmp_path / "x.nrrd", "--dig", tmp_path / "d.nrrd",
                          "--no-metrics", "--model", TINY_MODEL)
    assert code == 2 and "--no-metrics computes no map" in err
    assert not (tmp_path / "x.nrrd").exists()
