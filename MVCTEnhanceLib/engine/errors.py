"""Exceptions raised by MVCTEnhanceLib.

Every error a user can cause is an ``MVCTEnhanceError`` with a message that names the problem and,
where possible, what to do; the CLI prints the message as one line and the Slicer module shows it
in a dialog. Anything else escaping the library is a bug.
"""

from __future__ import annotations


class MVCTEnhanceError(Exception):
    """Base class of all user-facing errors."""


class InputError(MVCTEnhanceError, ValueError):
    """An input image or argument cannot be used (unreadable, not HU, NaN, wrong shape...)."""


class OutputError(MVCTEnhanceError):
    """An output cannot be written (exists without overwrite, same as input, unwritable...)."""


class ModelError(MVCTEnhanceError):
    """A model file cannot be used (missing, not TorchScript, no or bad card, wrong shape...)."""


class EnhanceCancelled(MVCTEnhanceError):
    """The caller's cancel check asked to stop; no partial result exists."""
