"""Shared test fixtures: where ../shared is, and 8 fake CPU devices for sharding tests."""

import os
import tempfile

# Fake devices must be configured before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent XLA compilation cache for every test and the training subprocesses they
# start (they inherit the environment): the same tiny programs are compiled many times, and
# XLA CPU compiles are the bulk of the suite's run time. Entries are keyed by the program,
# JAX version, flags and device count, so sharing is safe.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"deocc-test-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import logging
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Absolute, whatever the caller gave: tests build file:// URLs from these and start
# subprocesses in other folders.
SHARED = pathlib.Path(os.environ.get("DEOCC_SHARED", REPO.parent / "shared")).resolve()
os.environ["DEOCC_SHARED"] = str(SHARED)
os.environ["DEOCC_ASSETS_DIR"] = str(
    pathlib.Path(os.environ.get("DEOCC_ASSETS_DIR") or SHARED / "models").resolve())


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


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory, faces_dir, occluders_dir) -> dict:
    """`launch.quickstart` with the CI budget on ../shared data, run once per session.

    test_quickstart checks it end to end; test_evaluate, test_export and test_infer
    reuse its dataset, trained workdir and export, so the suite trains one model.
    The summary gets a "log" entry holding every line the quickstart printed.
    """
    from launch import quickstart
    out = tmp_path_factory.mktemp("quickstart")
    lines: list[str] = []
    summary = quickstart.run(str(out), input_spec=str(faces_dir),
                             occluders_dir=str(occluders_dir), budget="ci", log=lines.append)
    summary["log"] = lines
    summary["output_dir"] = str(out)
    return summary


@pytest.fixture(scope="session")
def empty_val_data_dir(tmp_path_factory, faces_dir) -> pathlib.Path:
    """The tiny dataset with an empty validation split, as when prep rejected its only photo."""
    from tests import pairs_fixture as pf
    return pf.tiny_dataset(tmp_path_factory, faces_dir, splits={"train": 16, "validation": 0})


class _Records(logging.Handler):
    """Collects absl's warnings (caplog cannot reach a session fixture)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="session")
def empty_val_run(tmp_path_factory, empty_val_data_dir) -> dict:
    """pairs_fixture.EMPTY_VAL_STEPS steps of the tiny config, validating every 2 on the empty split.

    The fault-injection tests of test_infer, test_export, test_train and
    test_checkpointing share it (read it, or damage a `pf.copy_workdir` copy).
    Returns {"workdir", "result", "warnings": absl's warnings during training}.
    """
    from deocc_jax.training import train_lib
    from tests import pairs_fixture as pf
    workdir = tmp_path_factory.mktemp("empty_val_run")
    records = _Records()
    logging.getLogger("absl").addHandler(records)
    try:
        result = train_lib.train_and_evaluate(pf.empty_val_config(empty_val_data_dir), str(workdir))
    finally:
        logging.getLogger("absl").removeHandler(records)
    return {"workdir": workdir, "result": result, "warnings": records.messages}
