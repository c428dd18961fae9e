"""The web page end to end: ``mvct-enhance serve`` in a subprocess on a loopback port, Debian's
Chromium (headless) driven by Playwright, the bundled sample and the shipped default model.

What a user sees is checked, in the page: Cancel stops a run and leaves nothing (no node, no file,
no process); a finished run's metrics table shows the numbers of the job's report; the enhanced
view's pixels (read from the image the server's Slicer view sent, PNG, lossless) differ from the
MVCT view's inside the body; the overlay tints the body and not the air around it; 'None' removes
it. The views are real Slicer slice views rendered by trame-slicer on the server.

Needs the 'web' extra and Chromium (``scripts/install.sh`` installs the one, ``.ci/run`` the other); without
either the tests fail with a line saying which is missing. A copy of the final page is
written where MVCTENHANCE_WEB_SCREENSHOT points (docs/web-screenshot.png was made so).
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("MVCTENHANCE_CHROMIUM", "/usr/bin/chromium")
#: Chromium's flags on these machines: no sandbox as root, no GPU, and nothing that calls out.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1500, "height": 800}
RUN_TIMEOUT_S = 240



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jobProcesses(workDir: Path) -> list[int]:
    """PIDs of live processes whose command line names the work folder (the conversion jobs)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(workDir) in cmdline and "mvct_enhance_batch" in cmdline:
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``mvct-enhance serve`` on a free loopback port; stopped (SIGINT) after the module's tests."""
    from MVCTEnhanceWeb import missingExtra

    problem = missingExtra()
    assert not problem, problem
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
    root = tmp_path_factory.mktemp("web")
    work, data = root / "work", root / "data"
    work.mkdir()
    data.mkdir()
    port = _free_port()
    log = (root / "server.log").open("w")
    command = [sys.executable, "-c", "import sys; from MVCTEnhanceLib.cli import main; sys.exit(main())",
               "serve", "--port", str(port), "--host", "127.0.0.1", "--data-dir", str(data),
               "--work-dir", str(work), "--device", "cpu"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=str(root))
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, f"the server exited ({process.returncode}):\n" + (root / "server.log").read_text()
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the server did not answer within 120 s"
        time.sleep(0.5)
    yield {"url": url, "work": work, "root": root, "process": process}
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()
    assert _jobProcesses(work) == []


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(server["root"] / "chromium-profile"), executable_path=CHROMIUM, args=CHROMIUM_FLAGS,
            headless=True, viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(server["url"])
        page.wait_for_selector("#load-sample")
        yield page
        context.close()


# -- reading the page ----------------------------------------------------------------------------------

def _state(page) -> str:
    return page.get_attribute("#status", "data-state")


def _waitForState(page, states: tuple[str, ...], timeout_s: float) -> str:
    page.wait_for_function(f"{json.dumps(list(states))}.includes(document.querySelector('#status').dataset.state)",
                           timeout=timeout_s * 1000)
    return _state(page)


def _viewPixels(page, view: str) -> np.ndarray:
    """The image the server's Slicer view last sent (RGB, as the page shows it, without the page's label)."""
    data = _viewImage(page, view)
    assert data, f"the {view} view shows no image"
    return _decoded(data)


def _decoded(data: str) -> np.ndarray:
    from PIL import Image

    image = Image.open(io.BytesIO(__import__("base64").b64decode(data.split(",", 1)[1]))).convert("RGB")
    return np.asarray(image).astype(np.int16)


def _viewImage(page, view: str) -> str | None:
    """The view's image as a PNG data URL; None while the page has not received (or decoded) one."""
    return page.evaluate("""(name) => {
        const label = document.querySelector(`.mvct-view-label[data-view="${name}"]`);
        const img = label.parentElement.querySelector('img');
        if (!img || !img.complete || !img.naturalWidth) return null;
        const canvas = document.createElement('canvas');
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
        canvas.getContext('2d').drawImage(img, 0, 0);
        return canvas.toDataURL('image/png');
    }""", view)


def _waitForView(page, view: str, condition, what: str, timeout_s: float = 20.0) -> np.ndarray:
    """The view's pixels once ``condition(pixels)`` holds (the server renders and sends asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        data = _viewImage(page, view)  # none yet: the first image may still be on its way
        pixels = _decoded(data) if data else None
        if pixels is not None and condition(pixels):
            return pixels
        assert time.monotonic() < deadline, f"the {view} view never showed {what}" + ("" if data else " (no image)")
        time.sleep(0.3)


def _chroma(pixels: np.ndarray) -> np.ndarray:
    return pixels.max(axis=2) - pixels.min(axis=2)


def _bodyMask(mvctPixels: np.ndarray) -> np.ndarray:
    """The body in the MVCT view: brighter than air in the soft-tissue window, holes filled, largest part."""
    from scipy import ndimage

    bright = mvctPixels.mean(axis=2) > 25
    bright = ndimage.binary_opening(bright, iterations=2)
    labels, n = ndimage.label(bright)
    assert n > 0, "no body in the MVCT view"
    sizes = ndimage.sum(bright, labels, range(1, n + 1))
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def _saveDebug(path: Path, pixels: np.ndarray, body: np.ndarray, marked: np.ndarray) -> None:
    """The view with the body's outline in blue and the marked pixels in red, for a failure's reader."""
    from PIL import Image
    from scipy import ndimage

    out = pixels.clip(0, 255).astype(np.uint8).copy()
    out[body ^ ndimage.binary_erosion(body)] = (0, 0, 255)
    out[marked] = (255, 0, 0)
    Image.fromarray(out).save(path)


def _tableRows(page) -> dict[tuple[str, str], dict[str, str]]:
    rows = page.eval_on_selector_all("#metrics-table tbody tr", """rows => rows.map(r =>
        Object.fromEntries([...r.querySelectorAll('td')].map(td => [td.dataset.column, td.textContent.trim()])))""")
    return {(r["metric"], r["image"]): r for r in rows}


def _sceneVolumes(page) -> list[str]:
    return page.eval_on_selector_all("#scene-volumes li", "items => items.map(i => i.textContent.trim())")


def _loadSample(page) -> None:
    page.click("#load-sample")
    page.wait_for_function("document.querySelector('#status').textContent.includes('Loaded')")
    assert _sceneVolumes(page) == ["sample_mvct", "sample_planning_ct"]
    # The MVCT and planning CT views show their volumes; nothing is in the enhanced view yet.
    _waitForView(page, "Green", lambda p: (p.mean(axis=2) > 25).mean() > 0.05, "the MVCT")
    _waitForView(page, "Yellow", lambda p: (p.mean(axis=2) > 25).mean() > 0.05, "the planning CT")


# -- without a browser ------------------------------------------------------------------------------

def test_serve_without_the_web_extra_says_so_in_one_line(monkeypatch, capsys):
    from MVCTEnhanceLib import cli

    monkeypatch.setitem(sys.modules, "trame_slicer", None)  # as if not installed
    assert cli.main(["serve", "--port", "0"]) == cli.EXIT_USER
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'web' extra" in err and "trame_slicer" in err and "pip install" in err


def test_the_pickers_list_volumes_and_dicom_series_only(tmp_path):
    from MVCTEnhanceWeb.app import listInputs

    for name in ("a.nrrd", "b.txt", ".hidden.nrrd", "sub/c.nii.gz", "sub/deep/d.mha", "series/x1.dcm",
                 "series/x2.dcm", ".cache/e.nrrd", "1/2/3/4/too_deep.nrrd"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    titles = [item["title"] for item in listInputs(tmp_path)]
    assert titles == ["bundled sample: sample_mvct.nrrd", "bundled sample: sample_planning_ct.nrrd", "a.nrrd",
                      "series/ (DICOM series)", "sub/c.nii.gz", "sub/deep/d.mha"]
    values = [item["value"] for item in listInputs(tmp_path)]
    assert str(tmp_path / "series") in values and all(Path(v).is_absolute() for v in values)


# -- in the browser (in this order: one server, one page) ------------------------------------------

def test_cancel_stops_the_run_and_leaves_nothing(page, server):
    t0 = time.monotonic()
    _loadSample(page)
    page.click("#enhance")
    _waitForState(page, ("running",), 30)
    # Wait until the job reports conversion progress: it is really running in its process.
    page.wait_for_function("document.querySelector('#progress-message').textContent.includes('Enhancing')",
                           timeout=120_000)
    assert _jobProcesses(server["work"]), "no conversion process runs while the page says it is converting"
    assert any(server["work"].iterdir()), "the running job has no work folder"
    page.click("#cancel")
    assert _waitForState(page, ("cancelled", "finished", "failed"), 30) == "cancelled"
    assert "Cancelled" in page.inner_text("#status") and "nothing was created" in page.inner_text("#status")
    assert _sceneVolumes(page) == ["sample_mvct", "sample_planning_ct"]  # no result node
    assert page.locator("#metrics-table").count() == 0
    deadline = time.monotonic() + 5
    while _jobProcesses(server["work"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _jobProcesses(server["work"]) == [], "the conversion process outlived Cancel"
    assert list(server["work"].iterdir()) == [], "Cancel left files behind"
    red = _viewPixels(page, "Red")
    assert red.max() < 10, "the enhanced view shows something after a cancelled run"
    print(f"cancel test: {time.monotonic() - t0:.1f} s")


def test_enhance_shows_the_result_metrics_and_a_masked_overlay(page, server):
    t0 = time.monotonic()
    if not _sceneVolumes(page):  # run alone (-k)
        _loadSample(page)
    page.click("#enhance")
    _waitForState(page, ("running",), 30)
    assert _waitForState(page, ("finished", "failed", "cancelled"), RUN_TIMEOUT_S) == "finished", \
        page.inner_text("#error")
    assert "Done" in page.inner_text("#status")
    assert list(server["work"].iterdir()) == [], "the finished job left its files behind"
    names = _sceneVolumes(page)
    assert "sample_mvct enhanced" in names and "sample_mvct NSelfSSIM" in names and "sample_mvct DIG" in names

    # The metrics table shows the numbers of the job's report (4 significant digits).
    report = json.loads(page.text_content("#report-json"))
    metrics = report["metrics"]
    rows = _tableRows(page)
    expected = {("NSelfSSIM", "MVCT (input)"): metrics["nselfssim"]["input"],
                ("NSelfSSIM", "enhanced"): metrics["nselfssim"]["output"],
                ("NSelfSSIM", "planning CT"): metrics["nselfssim"]["planning_ct"],
                ("DIG", "enhanced vs MVCT"): metrics["dig"]["output"]}
    for key, summary in expected.items():
        assert key in rows, f"row {key} missing from the table: {sorted(rows)}"
        for column in ("mean", "median", "p95"):
            assert float(rows[key][column]) == pytest.approx(summary[column], rel=6e-4), (key, column)
        assert int(rows[key]["voxels"]) == summary["n_voxels"]
    tissue = metrics["tissue_change"]["output"]
    assert float(rows[("Tissue change", "enhanced vs MVCT")]["mean"]) == pytest.approx(tissue["fraction"], rel=6e-4)
    assert int(rows[("Tissue change", "enhanced vs MVCT")]["voxels"]) == tissue["n_voxels"]
    assert rows[("DIG", "enhanced vs MVCT")]["unit"] == "HU^2/mm^2"
    assert metrics["nselfssim"]["output"]["mean"] < metrics["nselfssim"]["input"]["mean"]  # less noisy than the MVCT
    assert "NSelfSSIM" in page.inner_text("#legend-title")

    # The overlay (NSelfSSIM, opacity 0.5) tints the body, not the air around it.
    mvct = _viewPixels(page, "Green")
    body = _bodyMask(mvct)
    assert 0.03 < body.mean() < 0.6, f"implausible body in the MVCT view ({body.mean():.3f} of the view)"
    tinted = _waitForView(page, "Red", lambda p: (_chroma(p)[body] > 10).mean() > 0.5, "the overlay on the body")
    from scipy import ndimage

    # The band of air 10 to 25 pixels from the body's visible edge. Within 10 px (about 7 voxels here) the
    # engine's body mask (HU above its threshold, far below the soft-tissue window) may still reach past
    # what the window shows as body, so the map is rightly drawn there.
    rows_, cols_ = np.nonzero(body)
    margin = 25
    around = np.zeros_like(body)
    around[max(rows_.min() - margin, 0):rows_.max() + margin, max(cols_.min() - margin, 0):cols_.max() + margin] = True
    air = around & ~ndimage.binary_dilation(body, iterations=10)
    assert air.sum() > 1000
    leaks = (_chroma(tinted) > 6) & air
    if leaks.any():
        _saveDebug(server["root"] / "leaks.png", tinted, body, leaks)
    assert leaks.sum() == 0, (f"{leaks.sum()} air pixels around the body are tinted by the overlay (rows "
                              f"{np.nonzero(leaks)[0].min()}..{np.nonzero(leaks)[0].max()}, columns "
                              f"{np.nonzero(leaks)[1].min()}..{np.nonzero(leaks)[1].max()}; {server['root']}/leaks.png)")

    # Overlay 'None': the enhanced image itself; it differs from the MVCT inside the body, and is smoother.
    page.get_by_role("button", name="None", exact=True).click()
    inner = ndimage.binary_erosion(body, iterations=4)
    enhanced = _waitForView(page, "Red", lambda p: (_chroma(p)[inner] <= 2).mean() > 0.99, "the enhanced image alone")
    assert page.locator("#legend").count() == 0
    grey_mvct, grey_enh = mvct.mean(axis=2), enhanced.mean(axis=2)
    difference = np.abs(grey_enh - grey_mvct)[inner]
    assert difference.mean() > 3.0, f"the enhanced view is (almost) the MVCT view: mean difference {difference.mean():.2f}"
    noise = lambda g: np.abs(g - ndimage.uniform_filter(g, 3))[inner].mean()  # noqa: E731
    assert noise(grey_enh) < noise(grey_mvct), "the enhanced view is not smoother than the MVCT view"

    # Back to a map: DIG, with its own legend.
    page.get_by_role("button", name="DIG", exact=True).click()
    page.wait_for_function("document.querySelector('#legend-title') && "
                           "document.querySelector('#legend-title').textContent.includes('DIG')")
    _waitForView(page, "Red", lambda p: np.abs(p - enhanced)[inner].mean() > 5 and (_chroma(p)[air] <= 6).all(),
                 "the DIG overlay, inside the body only")
    page.get_by_role("button", name="NSelfSSIM", exact=True).click()
    _waitForView(page, "Red", lambda p: (_chroma(p)[body] > 10).mean() > 0.5, "the NSelfSSIM overlay again")
    time.sleep(1.0)
    shot = server["root"] / "page.png"
    page.screenshot(path=str(shot))
    target = os.environ.get("MVCTENHANCE_WEB_SCREENSHOT")
    if target:
        from PIL import Image

        image = Image.open(shot).convert("RGB")
        image = image.resize((image.width * 2 // 3, image.height * 2 // 3), Image.LANCZOS)
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(target, optimize=True)
    print(f"enhance test: {time.monotonic() - t0:.1f} s")
