"""Shared fixtures: real tiny TorchScript models and small HU volumes with real geometry."""

from __future__ import annotations

import numpy as np
import pytest

from MVCTEnhanceLib.training.tinymodel import write_tiny_model
from MVCTEnhanceLib.engine.volume import Volume

# A rotated (non-axial) direction: 20 degrees about x, then 10 about z; columns are i, j, k.
_a, _b = np.deg2rad(20.0), np.deg2rad(10.0)
_rx = np.array([[1, 0, 0], [0, np.cos(_a), -np.sin(_a)], [0, np.sin(_a), np.cos(_a)]])
_rz = np.array([[np.cos(_b), -np.sin(_b), 0], [np.sin(_b), np.cos(_b), 0], [0, 0, 1]])
ROTATED_DIRECTION = tuple((_rz @ _rx).ravel().tolist())


def phantom_array(shape=(4, 64, 64), seed: int = 0, noise_sd: float = 30.0) -> np.ndarray:
    """Air around an elliptical water-like body with a fat rim, a bone disk and an air pocket (HU)."""
    rng = np.random.default_rng(seed)
    k, n_r, n_c = shape
    r, c = np.mgrid[0:n_r, 0:n_c].astype(np.float32)
    r = (r - n_r / 2) / (n_r / 2)
    c = (c - n_c / 2) / (n_c / 2)
    body = (r / 0.8) ** 2 + (c / 0.9) ** 2 < 1
    inner = (r / 0.7) ** 2 + (c / 0.8) ** 2 < 1
    img = np.full(shape, -1000.0, np.float32)
    for s in range(k):
        sl = img[s]
        sl[body] = -80.0  # fat rim
        sl[inner] = 40.0  # muscle-like
        sl[(r - 0.2) ** 2 + (c + 0.1 * s / max(k, 1)) ** 2 < 0.04] = 800.0  # bone
        sl[(r + 0.3) ** 2 + (c - 0.3) ** 2 < 0.01] = -900.0  # air pocket
    img += rng.normal(0.0, noise_sd, shape).astype(np.float32) * (img > -950)
    return img


@pytest.fixture
def phantom_volume() -> Volume:
    return Volume(phantom_array(), spacing=(0.9, 1.1, 3.0), origin=(-30.5, 12.25, -7.0),
                  direction=ROTATED_DIRECTION)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    write_tiny_model(path, seed=0)
    return str(path)


@pytest.fixture(scope="session")
def identity_model_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("models") / "identity.pt"
    write_tiny_model(path, identity=True)
    return str(path)


def pytest_sessionfinish(session, exitstatus):
    # Release the MRML tests' scenes in order before Python's exit destroys them in any order.
    import sys

    scenes = sys.modules.get("slicer_scenes")
    if scenes is not None:
        scenes.releaseAll()
