"""Work beside the caller's: one function in a thread, its result or its error collected later.

The file jobs overlap what runs mostly outside Python (a volume's decompression in SimpleITK while
torch is imported and the model loaded; the enhanced volume's writing while the maps are computed),
so these seconds are not added one after the other. The thread is a daemon: an interrupted job does
not wait for it at exit, and :meth:`Background.wait` lets a job's clean-up wait before it removes
files the thread may still write.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Background(Generic[T]):
    """``fn()`` started at once in a daemon thread."""

    def __init__(self, fn: Callable[[], T], name: str = "mvctenhance-background") -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], T]) -> None:
        try:
            self._value = fn()
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc

    def wait(self) -> None:
        """Until ``fn`` has returned or raised (its error is kept for :meth:`result`)."""
        self._thread.join()

    def result(self) -> T:
        """``fn``'s value, or its exception raised here, in the caller's thread."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value
