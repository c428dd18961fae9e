"""Which devices are offered, and what 'auto' resolves to, before any run.

This machine's torch is a CPU build: what it reports is checked for real. The CUDA/MPS branches are
checked with a stand-in for torch's device queries (the only thing replaced); on a GPU machine the
real-torch test also covers them.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from MVCTEnhanceLib.engine import device as engineDevice
from MVCTEnhanceLib.engine.errors import InputError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MVCTEnhance"))
from MVCTEnhanceMRML import devices  # noqa: E402


def test_real_torch_lists_what_resolve_device_accepts_and_auto_agrees():
    names = engineDevice.available_devices()
    assert names[:2] == ["auto", "cpu"]
    assert ("cuda" in names) == torch.cuda.is_available()
    for name in names:
        engineDevice.resolve_device(name)  # every offered device is usable
    assert str(engineDevice.resolve_device("auto")).split(":")[0] == engineDevice.auto_device_name()
    for name in ("cuda", "mps"):
        if name not in names:
            with pytest.raises(InputError):
                engineDevice.resolve_device(name)
            assert "not available" in engineDevice.describe_device(name)


def _fakeTorch(gpus=(), mps=False):
    cuda = types.SimpleNamespace(is_available=lambda: bool(gpus), device_count=lambda: len(gpus),
                                 current_device=lambda: 0, get_device_name=lambda i: gpus[i])
    backends = types.SimpleNamespace(mps=types.SimpleNamespace(is_available=lambda: mps))
    return types.SimpleNamespace(cuda=cuda, backends=backends)


@pytest.mark.parametrize("gpus, mps, names, auto", [
    ((), False, ["auto", "cpu"], "cpu"),
    (("NVIDIA H200",), False, ["auto", "cpu", "cuda"], "cuda:0 (NVIDIA H200)"),
    (("A", "B"), False, ["auto", "cpu", "cuda", "cuda:0", "cuda:1"], "cuda:0 (A)"),
    ((), True, ["auto", "cpu", "mps"], "mps (Apple GPU)"),
])
def test_gpu_devices_are_offered_only_when_torch_reports_them(gpus, mps, names, auto):
    fake = _fakeTorch(gpus, mps)
    assert engineDevice.available_devices(fake) == names
    assert engineDevice.describe_device("auto", fake) == auto
    if len(gpus) > 1:
        assert engineDevice.describe_device("cuda:1", fake) == "cuda:1 (B)"
        assert "only 2" in engineDevice.describe_device("cuda:2", fake)


def test_without_torch_only_the_cpu_is_offered_and_nothing_imports_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.path.insert(0, %r); sys.path.insert(0, %r)\n"
            "from MVCTEnhanceMRML import devices\n"
            "print(devices.deviceChoices('cuda'))\n"
            "assert sys.modules['torch'] is None\n" % (str(REPO), str(REPO / "MVCTEnhance")))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert eval(done.stdout) == [("auto", "auto: cpu (PyTorch is not installed yet)"), ("cpu", "cpu"),
                                 ("cuda", "cuda (not available on this computer)")]


def test_module_device_box_entries_on_this_machine():
    devices.resetDeviceCache()
    choices = devices.deviceChoices("auto")
    assert choices[0] == ("auto", f"auto: {engineDevice.describe_device('auto')}")
    assert [v for v, _ in choices] == engineDevice.available_devices()
    assert devices.autoDeviceDescription() == engineDevice.describe_device("auto")
    assert devices.deviceChoices("cpu") == choices  # an available current value adds nothing
    if not torch.cuda.is_available():
        assert devices.deviceChoices("cuda:1")[-1] == ("cuda:1", "cuda:1 (not available on this computer)")
