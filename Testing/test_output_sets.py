"""Output sets (issue 10, items 2.4 and 2.5): every file of one command appears together or not at all.

Signals are real: the CLI runs in its own process and is sent SIGINT or SIGTERM while it is paused at a
known point by the test-only MVCTENHANCE_TEST_PAUSE hook (engine.files.TEST_PAUSE_ENV), with part of
its output set already written aside. Afterwards the output folder must hold exactly what it held
before: no output, no hidden temporary.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import phantom_array
from MVCTEnhanceLib import filejobs
from MVCTEnhanceLib.cli import main
from MVCTEnhanceLib.engine import files
from MVCTEnhanceLib.engine.errors import OutputError
from MVCTEnhanceLib.engine.files import STAGING_PREFIX, TEST_PAUSE_ENV, OutputSet
from MVCTEnhanceLib.engine.volume import Volume, read_volume, write_volume

SCRIPT = os.path.join(os.path.dirname(sys.executable), "mvct-enhance")
#: tqdm's bars share stderr with the messages; they are not message lines.
_PROGRESS = re.compile(r"^\s*\w+:\s+\d+%\|")


def _message_lines(stderr: str) -> list[str]:
    return [ln for ln in re.split(r"[\r\n]+", stderr) if ln.strip() and not _PROGRESS.match(ln)]


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} | \
        {str(p.relative_to(folder)) + "/": b"" for p in sorted(folder.rglob("*")) if p.is_dir()}


@pytest.fixture
def mvct_file(tmp_path):
    path = tmp_path / "in" / "mvct.nrrd"
    path.parent.mkdir()
    write_volume(Volume(phantom_array((4, 64, 64)), spacing=(1.0, 1.0, 3.0)), path)
    return path


def _signalled_run(argv, out_dir: Path, point: str, signals) -> subprocess.CompletedProcess:
    """Run the CLI paused at ``point``; once a file of its set lies in a staging folder, send ``signals``."""
    env = {**os.environ, TEST_PAUSE_ENV: f"{point}:120"}
    proc = subprocess.Popen([SCRIPT, *map(str, argv)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 240
    staged: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        staged = [f for d in out_dir.glob(STAGING_PREFIX + "*") for f in d.iterdir() if f.is_file()]
        if staged:
            break
        time.sleep(0.2)
    assert staged, f"the run never staged a file: {proc.communicate(timeout=30)}"
    time.sleep(0.5)  # well inside the pause (the file being staged is complete by now)
    for sig in signals:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_while_the_set_is_written_leaves_nothing(tmp_path, mvct_file, tiny_model_path, sig, code, word):
    # Paused with the enhanced volume written aside and the DIG map not yet: before, SIGTERM killed the
    # process (-15, hidden partial folders left) and SIGINT left the enhanced volume without its maps.
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "unrelated.txt").write_text("keep me")
    before = _listing(out_dir)
    run = _signalled_run(["enhance", mvct_file, "--output-dir", out_dir, "--model", tiny_model_path],
                         out_dir, "stage", [sig])
    assert run.returncode == code, run.stderr
    assert _message_lines(run.stderr) == [f"mvct-enhance: {word}; no output was written"], run.stderr
    assert "Traceback" not in run.stderr
    assert _listing(out_dir) == before


def test_signals_before_the_move_keep_the_old_files_and_a_second_signal_changes_nothing(tmp_path, mvct_file,
                                                                                      tiny_model_path):
    # --overwrite with the whole new set written aside: the old files stay until the new set is
    # complete. SIGINT, then SIGTERM while the first one's cleanup runs (or, if both are pending at
    # once, Python handles SIGINT first): one line, exit 130, the old files intact.
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for name in ("e.nrrd", "d.nrrd", "r.json"):
        (out_dir / name).write_bytes(b"old " + name.encode())
    before = _listing(out_dir)
    run = _signalled_run(["enhance", mvct_file, "-o", out_dir / "e.nrrd", "--dig", out_dir / "d.nrrd",
                          "--report", out_dir / "r.json", "--model", tiny_model_path, "--overwrite"],
                         out_dir, "commit", [signal.SIGINT, signal.SIGTERM])
    assert run.returncode == 130, run.stderr
    assert _message_lines(run.stderr) == ["mvct-enhance: interrupted; no output was written"], run.stderr
    assert _listing(out_dir) == before


def test_simulate_interrupted_before_its_output_is_in_place_writes_nothing(tmp_path):
    src = tmp_path / "kv.nrrd"
    write_volume(Volume(phantom_array((1, 32, 32), noise_sd=0.0), spacing=(2.0, 2.0, 3.0)), src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    run = _signalled_run(["simulate", src, "-o", out_dir / "mv.nrrd"], out_dir, "commit", [signal.SIGINT])
    assert run.returncode == 130, run.stderr
    assert _message_lines(run.stderr) == ["mvct-enhance: interrupted; no output was written"], run.stderr
    assert list(out_dir.iterdir()) == []


def test_a_report_that_cannot_be_written_leaves_no_enhanced_volume(tmp_path, capsys, mvct_file, tiny_model_path,
                                                                   monkeypatch):
    # Before, the enhanced volume stayed behind and a rerun without --overwrite failed with "exists".
    def full_disk(data, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(filejobs, "write_json", full_disk)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = main(["enhance", str(mvct_file), "--output-dir", str(out_dir), "--model", tiny_model_path])
    err = capsys.readouterr().err
    assert code == 2
    assert _message_lines(err) == [f"mvct-enhance: error: cannot write '{out_dir / 'mvct_report.json'}' "
                                   "(No space left on device); no output was written"], err
    assert list(out_dir.iterdir()) == []
    monkeypatch.undo()
    assert main(["enhance", str(mvct_file), "--output-dir", str(out_dir), "--model", tiny_model_path]) == 0
    assert {p.name for p in out_dir.iterdir()} == {"mvct_enhanced.nrrd", "mvct_dig.nrrd", "mvct_nselfssim.nrrd",
                                                   "mvct_report.json", "mvct_montage.png"}


def test_an_unwritable_output_folder_is_found_before_any_computation(tmp_path, capsys, mvct_file, tiny_model_path,
                                                                     monkeypatch):
    # The folder refuses new files (what a read-only folder does; root ignores permission bits, so the
    # refusal is simulated here and done for real below when the tests do not run as root).
    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", str(Path(dir) / ".mvct-tmp-x"))

    def no_computation(*args, **kwargs):
        raise AssertionError("the computation ran before the output folder was checked")

    monkeypatch.setattr(files.tempfile, "mkdtemp", refuse)
    monkeypatch.setattr(filejobs, "run_enhance", no_computation)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = main(["enhance", str(mvct_file), "-o", str(out_dir / "e.nrrd"), "--model", tiny_model_path])
    err = capsys.readouterr().err
    assert code == 2, err
    assert _message_lines(err) == [f"mvct-enhance: error: output folder '{out_dir}' cannot be written "
                                   "(Permission denied); choose another folder"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused_before_computing(tmp_path, capsys, mvct_file, tiny_model_path,
                                                               monkeypatch):
    monkeypatch.setattr(filejobs, "run_enhance", lambda *a, **k: pytest.fail("computed before checking the folder"))
    out_dir = tmp_path / "ro"
    out_dir.mkdir()
    out_dir.chmod(0o555)
    try:
        code = main(["enhance", str(mvct_file), "-o", str(out_dir / "e.nrrd"), "--model", tiny_model_path])
    finally:
        out_dir.chmod(0o755)
    err = capsys.readouterr().err
    assert code == 2 and f"output folder '{out_dir}' cannot be written" in err, err
    assert list(out_dir.iterdir()) == []


def test_an_output_set_is_replaced_together_or_not_at_all(tmp_path, monkeypatch):
    # Overwriting: a rename that fails half-way through the move undoes the renames already done.
    for name in ("a.nrrd", "b.mhd", "c.json"):
        (tmp_path / name).write_bytes(b"old")
    before = _listing(tmp_path)
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst) == tmp_path / "c.json":  # the move into place, not the writer's own rename
            raise OSError(5, "Input/output error", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OutputError, match="no output was changed"):
        with OutputSet(overwrite=True) as outputs:
            a, b, c = (outputs.add(tmp_path / n) for n in ("a.nrrd", "b.mhd", "c.json"))
            write_volume(Volume(phantom_array((2, 16, 16))), outputs.stage(a))
            write_volume(Volume(phantom_array((2, 16, 16))), outputs.stage(b))  # .mhd + .zraw
            files.write_json({"x": 1}, outputs.stage(c))
    assert _listing(tmp_path) == before
    monkeypatch.undo()
    with OutputSet(overwrite=True) as outputs:
        a, b, c = (outputs.add(tmp_path / n) for n in ("a.nrrd", "b.mhd", "c.json"))
        write_volume(Volume(phantom_array((2, 16, 16))), outputs.stage(a))
        write_volume(Volume(phantom_array((2, 16, 16))), outputs.stage(b))
        files.write_json({"x": 1}, outputs.stage(c))
    assert read_volume(a).array.shape == read_volume(b).array.shape == (2, 16, 16)
    assert json.loads(c.read_text()) == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nrrd", "b.mhd", "b.zraw", "c.json"]


def test_an_error_before_the_end_removes_everything_the_set_staged(tmp_path):
    with pytest.raises(RuntimeError):
        with OutputSet() as outputs:
            a = outputs.add(tmp_path / "a.nrrd")
            write_volume(Volume(phantom_array((2, 16, 16))), outputs.stage(a))
            raise RuntimeError("the computation failed")
    assert list(tmp_path.iterdir()) == []


# -- writes in the background ------------------------------------------------------------------------

def _slow_write(text: str, seconds: float = 0.0, fail: bool = False):
    def write(staged: Path) -> None:
        time.sleep(seconds)
        if fail:
            raise OSError(28, "No space left on device", str(staged))
        staged.write_text(text)
    return write


def test_background_writes_run_in_order_and_commit_together(tmp_path):
    order = []
    with OutputSet() as outputs:
        a, b = outputs.add(tmp_path / "a.txt"), outputs.add(tmp_path / "b.txt")
        outputs.stage_in_background(a, lambda staged: (time.sleep(0.3), order.append("a"), staged.write_text("A")))
        outputs.stage_in_background(b, lambda staged: (order.append("b"), staged.write_text("B")))
        assert not a.exists() and not b.exists()  # nothing in place before the set commits
    assert order == ["a", "b"] and a.read_text() == "A" and b.read_text() == "B"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]  # no staging folder left


def test_a_failed_background_write_discards_the_set_in_user_terms(tmp_path):
    (tmp_path / "old.txt").write_text("kept")
    with pytest.raises(OutputError, match=r"cannot write '.*b\.txt' \(No space left on device\); no output"):
        with OutputSet() as outputs:
            a, b = outputs.add(tmp_path / "a.txt"), outputs.add(tmp_path / "b.txt")
            outputs.stage_in_background(a, _slow_write("A"))
            outputs.stage_in_background(b, _slow_write("B", fail=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.txt"]


def test_an_error_while_a_background_write_runs_waits_for_it_and_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="the job failed"):
        with OutputSet() as outputs:
            outputs.stage_in_background(outputs.add(tmp_path / "a.txt"), _slow_write("A", seconds=0.5))
            raise RuntimeError("the job failed")  # the write is still sleeping: it must not land afterwards
    time.sleep(0.7)
    assert list(tmp_path.iterdir()) == []
