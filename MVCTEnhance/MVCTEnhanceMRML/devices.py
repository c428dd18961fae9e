"""The devices the module offers: only those this machine has, with what 'auto' resolves to.

The engine decides (``MVCTEnhanceLib.engine.device``); this file turns its answer into the entries
of the device box, computed once per Slicer session (torch is imported on the first call, not when
Slicer starts; without torch the CPU is the only device).
"""

from __future__ import annotations

import functools

from MVCTEnhanceLib.engine import device as engineDevice


@functools.lru_cache(maxsize=1)
def _available() -> tuple[tuple[str, str], ...]:
    entries = []
    for name in engineDevice.available_devices():
        if name == "auto":
            entries.append((name, f"auto: {engineDevice.describe_device('auto')}"))
        else:
            entries.append((name, engineDevice.describe_device(name)))
    return tuple(entries)


def deviceChoices(current: str | None = None) -> list[tuple[str, str]]:
    """(value, label) for each device to offer: 'auto' (labelled with what it resolves to), 'cpu',
    and 'cuda'/'cuda:N'/'mps' only where torch can use them. A ``current`` value that is not available
    here (a scene saved on a GPU workstation) is kept at the end, marked, so that it is not silently
    replaced; running with it fails with the engine's message."""
    entries = list(_available())
    values = [value for value, _ in entries]
    current = (current or "").strip().lower()
    if current and current not in values:
        entries.append((current, f"{current} (not available on this computer)"))
    return entries


def autoDeviceDescription() -> str:
    """What 'auto' will use, e.g. 'cuda:0 (NVIDIA RTX A6000)' or 'cpu'."""
    return dict(_available())["auto"].split(": ", 1)[1]


def resetDeviceCache() -> None:
    """Ask torch again (after PyTorch was installed in this session)."""
    _available.cache_clear()
