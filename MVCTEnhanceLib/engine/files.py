"""Files the library writes and reads: small JSON files, and the output sets of the file jobs.

JSON (manifests, run records, cards, reports): one writer (atomic: a temporary file beside the
target, then a rename) and one reader, so that every such file that is missing, unreadable, not JSON
or not a JSON object gives the same kind of one-line :class:`InputError` instead of a traceback.

Output sets (:class:`OutputSet`): all files of one command appear together or not at all, also on
SIGINT and SIGTERM (with :func:`interrupts_as_exceptions`, which the CLI installs)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .background import Background
from .errors import InputError, OutputError


def read_json_object(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; ``what`` names the file in error messages ("card extra file")."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} '{p}' does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} '{p}' cannot be read ({exc})") from None
    except ValueError as exc:
        raise InputError(f"{what} '{p}' is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{what} '{p}' must hold a JSON object, not {type(data).__name__}")
    return data


def json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):  # numpy scalars and arrays
        return o.tolist()
    return str(o)


def write_json(data: Any, path: str | os.PathLike) -> Path:
    """``data`` as indented JSON in ``path``, written aside and renamed into place."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.partial")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=json_default) + "\n", encoding="utf-8")
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


# -- output sets: every file of one command appears together or not at all ------------------------

#: Test-only hook: "POINT:SECONDS" makes every output set sleep at POINT, so that tests can send real
#: signals at a known moment. POINT "stage": when a second file is about to be written aside (one
#: file of the set already lies in the staging folder); "commit": every file is written aside and
#: none moved into place yet. Unset in normal use; read at the moment of the pause.
TEST_PAUSE_ENV = "MVCTENHANCE_TEST_PAUSE"
#: Prefix of the hidden staging folders (beside the targets: same filesystem, so moving is a rename).
STAGING_PREFIX = ".mvct-tmp-"


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt is for SIGINT while :func:`interrupts_as_exceptions` is active.

    A BaseException like KeyboardInterrupt, so ``except Exception`` in the library does not swallow it.
    """


_INTERRUPTS: dict[int, type[BaseException]] = {signal.SIGINT: KeyboardInterrupt, signal.SIGTERM: Terminated}
_state: dict[str, Any] = {"shield": 0, "pending": None, "stopping": False, "committed": 0}


def _on_signal(signum: int, frame: Any) -> None:
    if _state["stopping"]:
        # A second signal while the first one's exception unwinds: ignored, so that the cleanup (which
        # only removes temporaries and takes milliseconds) completes; SIGKILL stays for a hung process.
        return
    if _state["shield"]:
        _state["pending"] = _state["pending"] or signum  # raised when the shielded section ends
        return
    _state["stopping"] = True
    raise _INTERRUPTS[signum]()


@contextlib.contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt and SIGTERM :class:`Terminated` (instead of killing the process,
    which leaves temporaries behind), except inside an output set's commit and cleanup, where they
    wait until it has finished. Main thread only (elsewhere a no-op); the old handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, _on_signal) for sig in _INTERRUPTS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        _state.update(pending=None, stopping=False)


class _Shielded:
    """Signals (through :func:`interrupts_as_exceptions`) wait until this section ends, then raise."""

    def __enter__(self) -> None:
        _state["shield"] += 1

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        _state["shield"] -= 1
        signum = _state["pending"]
        if _state["shield"] == 0 and signum is not None:
            _state["pending"] = None
            if not isinstance(exc, tuple(_INTERRUPTS.values())):
                _state["stopping"] = True
                raise _INTERRUPTS[signum]() from exc
        return False


def _interrupt_pending() -> bool:
    return _state["pending"] is not None


def committed_sets() -> int:
    """How many output sets this process has moved into place (the CLI words its interrupt line by it)."""
    return int(_state["committed"])


def _test_pause(point: str) -> None:
    value = os.environ.get(TEST_PAUSE_ENV, "")
    name, _, seconds = value.partition(":")
    if name == point:
        # Short sleeps: a signal that the kernel hands to another thread (torch's, tqdm's) does not
        # wake the main thread from one long sleep, and Python handles signals only in the main thread.
        deadline = time.monotonic() + float(seconds or 60)
        while time.monotonic() < deadline:
            time.sleep(0.05)


class OutputSet:
    """The files one command writes: checked before any work, written aside, moved into place together.

        with OutputSet(overwrite) as outputs:
            out = outputs.add("result/enhanced.nrrd")       # checked now; an unwritable folder fails here
            ...compute...
            write_volume(volume, outputs.stage(out))       # written into a hidden staging folder
        # here every file is in place, or (on any exception, SIGINT, SIGTERM) none is and no temporary remains

    Each target folder gets one hidden staging folder (``.mvct-tmp-*``) when its first target is
    added: creating it is the check that the folder can be written, done before the computation.
    On success every staged file (with companions such as a .mhd's .raw) is renamed into place.
    Files being replaced (``overwrite``) stay untouched until the whole new set is complete; if a
    rename fails or a signal arrives during the renames, the ones done are undone and the old files
    restored, so the set is replaced together or not at all (short of a crash in those milliseconds).
    """

    def __init__(self, overwrite: bool = False) -> None:
        self.overwrite = overwrite
        self._targets: dict[Path, Path] = {}   # resolved target -> target as given
        self._staging: dict[Path, Path] = {}   # resolved target folder -> its staging folder
        self._staged: dict[Path, Path] = {}    # staged file -> target as given
        self._writers: list[Background] = []  # stage_in_background(), in order

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        for writer in self._writers:  # nothing is committed or removed while a thread still writes
            writer.wait()
        if exc is None:
            try:
                self.finish_background()
            except BaseException as write_error:
                self._discard_for(write_error)
                raise
            self.commit()
            return False
        self._discard_for(exc)
        return False

    def _discard_for(self, exc: BaseException) -> None:
        """Discard the set because of ``exc``; a write error naming a staged file is raised in user terms."""
        user_error = self._in_user_terms(exc)
        self.discard()
        if user_error is not None:
            raise user_error from None

    def stage_in_background(self, path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
        """:meth:`stage` ``path`` and run ``write(staged)`` in a background thread, after the writes
        staged this way before it (one at a time: one copy of a volume in memory). The set waits for
        every such write before it commits or discards; :meth:`finish_background` (or the commit)
        raises the first one's error."""
        staged, before = self.stage(path), self._writers[-1:]

        def run() -> None:
            for previous in before:
                previous.wait()
            write(staged)

        self._writers.append(Background(run, name=f"write-{Path(path).name}"))

    def finish_background(self) -> None:
        """Wait for the background writes; raise the first error among them."""
        for writer in self._writers:
            writer.result()

    def _in_user_terms(self, exc: BaseException) -> OutputError | None:
        """A write error that names a staged file, reworded to name the user's path (None: leave it)."""
        if isinstance(exc, OSError) and exc.filename and STAGING_PREFIX in str(exc.filename):
            staged = Path(exc.filename)
            target = next((t for f, t in self._staged.items() if f.name == staged.name), staged.name)
            return OutputError(f"cannot write '{target}' ({exc.strerror or exc}); no output was written")
        if isinstance(exc, OutputError) and STAGING_PREFIX in str(exc):
            text = str(exc)
            for staged_file, target in self._staged.items():
                text = text.replace(str(staged_file), str(target))
            return OutputError(text)
        return None

    def add(self, path: str | os.PathLike, what: str = "output", example: str = "output.nrrd",
            hint: str = "", validate: Callable[[Path], Any] | None = None, folder_output: bool = False) -> Path:
        """Reserve ``path`` for this set after checking it and its folder; returns it as a Path.

        ``what`` names the output in messages; ``example`` is a file name suggested when ``path`` is a
        folder, ``hint`` an alternative added to that message (e.g. " or use --output-dir");
        ``validate(path)`` runs the caller's own checks (extension, not an input) after that one.
        ``folder_output``: the output is a folder of files (a DICOM series), written into the folder
        :meth:`stage` names and moved into place whole; an existing empty folder is taken as free.
        """
        p = Path(path)
        if folder_output:
            if p.exists() and not p.is_dir():
                raise OutputError(f"{what} '{p}' is a file; give a folder (new or empty) for it")
        elif p.is_dir():
            raise OutputError(f"{what} '{p}' is a folder; give a file name such as '{p / example}'{hint}")
        if validate is not None:
            validate(p)
        folder = p.parent
        if not folder.exists():
            raise OutputError(f"output folder '{folder}' does not exist")
        if not folder.is_dir():
            raise OutputError(f"'{folder}' is a file, not a folder: {what} '{p}' cannot be written there")
        key = p.resolve()
        if key in self._targets:
            raise OutputError(f"'{p}' is given for two outputs; give each output its own path")
        if p.exists() and not self.overwrite and not (folder_output and not any(p.iterdir())):
            raise OutputError(f"{what} '{p}' exists; use --overwrite (overwrite=True) to replace it")
        self._staging_folder(key.parent, folder)
        self._targets[key] = p
        return p

    def _staging_folder(self, resolved: Path, folder: Path) -> Path:
        staging = self._staging.get(resolved)
        if staging is None:
            with _Shielded():  # a signal between creating and recording it would leak the folder
                try:
                    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=resolved))
                except OSError as exc:
                    raise OutputError(f"output folder '{folder}' cannot be written ({exc.strerror or exc}); "
                                      "choose another folder") from None
                self._staging[resolved] = staging
        return staging

    def stage(self, path: str | os.PathLike) -> Path:
        """Where to write the content of target ``path`` (added before): a file (or, for a folder output,
        a folder the caller creates) in the staging folder."""
        key = Path(path).resolve()
        if key not in self._targets:
            raise OutputError(f"'{path}' was not added to this output set")  # a bug of the caller
        if self._staged:
            _test_pause("stage")
        staged = self._staging[key.parent] / key.name
        self._staged[staged] = self._targets[key]
        return staged

    def commit(self) -> list[Path]:
        """Move every staged file into place (see the class); returns the targets as given."""
        try:
            _test_pause("commit")
            with _Shielded():
                moves = [(f, folder / f.name) for folder, staging in self._staging.items()
                         for f in sorted(staging.iterdir()) if f.is_file() or f.is_dir()]
                missing = [str(t) for k, t in self._targets.items()
                           if not (self._staging[k.parent] / k.name).exists()]
                if missing:  # a caller that skipped an output it announced: a bug, never a partial set
                    raise OutputError(f"internal: no file was written for {', '.join(missing)}")
                self._replace_together(moves)
                if not _interrupt_pending():
                    _state["committed"] += 1
        finally:
            self.discard()  # the staging folders, with the replaced files' backups
        return list(self._targets.values())

    def _replace_together(self, moves: list[tuple[Path, Path]]) -> None:
        done: list[tuple[Path, Path | None]] = []  # (target, backup of the file it replaces), in order
        target = None
        try:
            for new, target in moves:
                backup, moved_aside = None, False
                if target.exists():
                    backup = new.parent / ".replaced" / target.name
                    backup.parent.mkdir(exist_ok=True)
                    try:
                        os.link(target, backup)  # the old file stays in place until the rename
                    except OSError:  # filesystems without hard links
                        os.replace(target, backup)
                        moved_aside = True
                try:
                    os.replace(new, target)
                except OSError:
                    if moved_aside:
                        os.replace(backup, target)
                    raise
                done.append((target, backup))
            if _interrupt_pending():  # interrupted while renaming: the user gets nothing, as promised
                raise _Rollback()
        except (OSError, _Rollback) as exc:
            failed = target
            for placed, backup in reversed(done):
                if placed.is_dir() and not placed.is_symlink():  # a folder output (moved aside, never linked)
                    shutil.rmtree(placed, ignore_errors=True)
                if backup is not None:
                    os.replace(backup, placed)
                else:
                    placed.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise OutputError(f"cannot move '{failed}' into place ({exc.strerror or exc}); "
                                  "no output was changed") from None

    def discard(self) -> None:
        """Remove every staged file and staging folder; targets are not touched."""
        with _Shielded():
            self._remove_staging()

    def _remove_staging(self) -> None:
        for staging in self._staging.values():
            shutil.rmtree(staging, ignore_errors=True)
        self._staging.clear()


class _Rollback(Exception):
    """Internal: undo the renames of a commit."""
