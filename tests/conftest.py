"""Shared test fixtures: where ../shared is, and 8 fake CPU devices for sharding tests."""

import os

# Fake devices must be configured before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("DEOCC_SHARED", REPO.parent / "shared"))
os.environ.setdefault("DEOCC_ASSETS_DIR", str(SHARED / "models"))


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    if not (SHARED / "data" / "faces").is_dir():
        pytest.fail(f"shared data not found at {SHARED}; set DEOCC_SHARED")
    return SHARED


@pytest.fixture(scope="session")
def faces_dir(shared_dir) -> pathlib.Path:
    return shared_dir / "data" / "faces"


@pytest.fixture(scope="session")
def occluders_dir(shared_dir) -> pathlib.Path:
    return shared_dir / "occluders"
