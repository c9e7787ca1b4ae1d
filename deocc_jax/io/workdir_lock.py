"""One trainer per workdir: a lock file naming its holder (host, pid, start time).

`{workdir}/deocc.lock` is created by the trainer and held with `flock` for as
long as it runs; its contents say who holds it:

    {"host": "gpu-7", "pid": 4242, "started": "2026-11-25T18:02:11+00:00", "command": "..."}

A second trainer on the same workdir finds the `flock` taken and refuses with
one line naming the holder. A trainer that was SIGKILLed (a preempted VM)
cannot remove the file, so the next one finds the file but no `flock`: a
*stale* lock. On the same host that is proof that its holder has ended (its
`flock` would still be held, whatever its pid has become), so the new trainer
takes the workdir over with one log line naming the old holder: restarting
the same command after a preemption just resumes. A holder on another host
sharing the folder may still be alive (NFS may not pass locks on), so such a
lock is refused until told `break_lock=True` (`--break_lock`).

Workdirs on object stores (gs://...) cannot be locked; `WorkdirLock` logs a
warning there and does nothing.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import time

from absl import logging

from deocc_jax import errors

LOCK_FILE = "deocc.lock"
BREAK_FLAG = "--break_lock"


class WorkdirLockedError(errors.UserError):
    """The workdir is used by another trainer, or holds a stale lock (see the message)."""


def _holder_info() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "start_time": time.time(), "command": " ".join(sys.argv)[:500]}


def describe(holder: dict | None) -> str:
    """'pid 4242 on host gpu-7 (started 2026-...)' or a note that the file was unreadable."""
    if not holder:
        return "an unknown process (the lock file is empty or unreadable)"
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
            f"(started {holder.get('started', '?')})")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_holder(workdir: str) -> dict | None:
    """The contents of a workdir's lock file, or None when there is none or it is unreadable."""
    try:
        with open(os.path.join(workdir, LOCK_FILE)) as f:
            return json.loads(f.read() or "null")
    except (OSError, ValueError):
        return None


class WorkdirLock:
    """Holds `{workdir}/deocc.lock` while training; a context manager.

    Args:
      workdir: the experiment folder (created if missing).
      break_lock: take over a lock written from another host instead of
        refusing (a stale lock written on this host is taken over anyway). A
        lock held by a running process on this host is never broken.
      enabled: False makes this a no-op (processes other than 0 of a
        multi-host run: process 0 locks for all).

    Raises (from `acquire`):
      WorkdirLockedError: another trainer holds it, or it was written from
        another host and `break_lock` is False.
    """

    def __init__(self, workdir: str, *, break_lock: bool = False, enabled: bool = True):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self.break_lock = break_lock
        self.enabled = enabled and "://" not in workdir
        if enabled and not self.enabled:
            logging.warning("%s is not a local folder: it cannot be locked, so make sure no other "
                            "trainer uses it", workdir)
        self._fd: int | None = None
        self.previous: dict | None = None  # the stale holder that was taken over

    def acquire(self) -> "WorkdirLock":
        if not self.enabled or self._fd is not None:
            return self
        os.makedirs(self.workdir, exist_ok=True)
        for _ in range(20):  # retried only if the file is replaced under us
            # writer-policy: exempt (a lock file, flock'd in place; its text only names the holder)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise WorkdirLockedError(self._in_use_message()) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # its holder removed it as we opened it: lock the new file
                os.close(fd)
                continue
            try:
                self._check_stale(fd)
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(_holder_info(), indent=1) + "\n").encode(), 0)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return self
        raise WorkdirLockedError(f"{self.path}: could not be locked (it keeps being replaced)")

    def _in_use_message(self) -> str:
        holder = None
        for _ in range(10):  # the holder writes its details right after locking
            holder = read_holder(self.workdir)
            if holder:
                break
            time.sleep(0.05)
        return (f"--workdir {self.workdir} is in use by another trainer: {describe(holder)} holds "
                f"{self.path}; wait for it to finish or use another --workdir")

    def _check_stale(self, fd: int) -> None:
        data = os.pread(fd, 1 << 16, 0)
        if not data.strip():
            return  # a fresh file (or one whose holder exited before writing)
        try:
            holder = json.loads(data)
        except ValueError:
            holder = None
        here = isinstance(holder, dict) and holder.get("host") == socket.gethostname()
        if here:
            pid = holder.get("pid")
            # Its flock is free, so it has ended; a live pid is a reused one (in a
            # restarted container it can even be ours).
            reused = isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid)
            why = "its pid now belongs to another process" if reused else "it is no longer running"
            detail = f"stale lock {self.path}: {describe(holder)} ended without releasing it ({why})"
        else:
            detail = (f"{self.path} is held by {describe(holder)}, which cannot be checked from "
                      f"host {socket.gethostname()}")
        if here:
            # The free flock is the proof: nothing can still be writing here.
            logging.warning("%s: taking the workdir over", detail)
        elif not self.break_lock:
            raise WorkdirLockedError(
                f"--workdir {self.workdir}: {detail}; if no other trainer uses this workdir, "
                f"pass {BREAK_FLAG} to take it over")
        else:
            logging.warning("%s: taking it over (%s)", detail, BREAK_FLAG)
        self.previous = holder

    def release(self) -> None:
        """Removes the lock file and releases the lock (idempotent)."""
        if self._fd is None:
            return
        # Unlink before unlocking: a trainer that opened the old file meanwhile sees
        # its inode vanish and retries on a new file (see acquire).
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
