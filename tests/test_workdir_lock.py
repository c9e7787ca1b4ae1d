"""deocc_jax.io.workdir_lock: one trainer per workdir, stale locks taken over only when provably dead."""

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from deocc_jax.io import workdir_lock
from tests import pairs_fixture as pf


def test_second_trainer_is_refused_and_a_stale_lock_reported(empty_val_data_dir, tmp_path):
    workdir = tmp_path / "run"
    flags = dict(num_train_steps=100000, checkpoint_every_steps=2, eval_every_steps=0,
                 log_every_steps=1000)
    first = subprocess.Popen(pf.train_command(workdir, empty_val_data_dir, **flags), cwd=pf.REPO,
                             env=pf.subprocess_env(num_devices=1), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (workdir / "checkpoints" / "2").is_dir():
            assert first.poll() is None and time.time() < deadline, "the first trainer did not start"
            time.sleep(0.2)
        # A second trainer on the same workdir (the first one keeps going).
        second = subprocess.run(pf.train_command(workdir, empty_val_data_dir,
                                                 **{**flags, "num_train_steps": 2}),
                                cwd=pf.REPO, env=pf.subprocess_env(num_devices=1),
                                capture_output=True, text=True, timeout=300)
        pf.assert_one_line_error(second, "in use by another trainer", f"pid {first.pid}",
                                 "deocc.lock")
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()
    # SIGKILLed: its lock file stays, without the flock. On this host that proves the
    # holder is gone: the next trainer takes the workdir over, naming the old holder.
    from deocc_jax.io import workdir_lock
    with workdir_lock.WorkdirLock(str(workdir)) as lock:
        assert lock.previous["pid"] == first.pid
        assert workdir_lock.read_holder(str(workdir))["pid"] == os.getpid()
    assert not (workdir / workdir_lock.LOCK_FILE).exists()


def test_lock_held_from_another_host_is_not_taken_silently(tmp_path):
    from deocc_jax.io import workdir_lock
    (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(
        {"host": "some-other-host", "pid": 1, "started": "2026-11-25T10:00:00+00:00"}))
    with pytest.raises(workdir_lock.WorkdirLockedError,
                       match="pid 1 on host some-other-host .*cannot be checked.*--break_lock"):
        workdir_lock.WorkdirLock(str(tmp_path)).acquire()
    lock = workdir_lock.WorkdirLock(str(tmp_path), break_lock=True).acquire()
    try:  # a live lock in this process is never broken, not even with break_lock
        with pytest.raises(workdir_lock.WorkdirLockedError, match="in use by another trainer"):
            workdir_lock.WorkdirLock(str(tmp_path), break_lock=True).acquire()
    finally:
        lock.release()


def test_stale_lock_of_this_host_is_taken_over_and_another_hosts_is_not(tmp_path, caplog):
    """After kill -9 the same train command resumes: the free flock proves the holder is gone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = {"host": socket.gethostname(), "pid": dead.pid, "started": "2026-12-07T10:00:00+00:00"}
    (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(holder))
    with caplog.at_level(logging.WARNING), workdir_lock.WorkdirLock(str(tmp_path)) as lock:
        assert lock.previous["pid"] == dead.pid
        assert workdir_lock.read_holder(str(tmp_path))["pid"] == os.getpid()
    taken = [r.getMessage() for r in caplog.records if "taking the workdir over" in r.getMessage()]
    assert len(taken) == 1 and f"pid {dead.pid} on host {socket.gethostname()}" in taken[0]
    # Another host's holder may be alive (a shared folder): still refused without --break_lock.
    (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps({**holder, "host": "elsewhere"}))
    with pytest.raises(workdir_lock.WorkdirLockedError, match="cannot be checked.*--break_lock"):
        workdir_lock.WorkdirLock(str(tmp_path)).acquire()
