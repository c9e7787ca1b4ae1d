"""Atomic outputs: a file or a folder appears under its final name complete, or not at all.

Everything is first written to a hidden temporary sibling (same folder, so the
same file system), flushed to disk with fsync, and then renamed into place;
the folder is fsynced too, so the rename itself survives a power cut. A crash
or SIGKILL at any moment leaves either the old content or the new one under
the final name, plus at worst a hidden `.NAME.partial-PID-XXXX` leftover.

Folders (exports) are replaced with one `renameat2(RENAME_EXCHANGE)` where
Linux offers it, so the final name never even goes missing; elsewhere the old
folder is first renamed aside (see `publish_directory`).

The writer policy every deocc output follows (photos, masks, videos, reports,
exports): nothing that exists is replaced unless the caller passes
`overwrite=True` (the binaries' `--overwrite`); the final rename itself refuses
a name that appeared meanwhile (`rename_no_replace`). Before a run writes
anything it plans every output name and checks them together (`plan_outputs`):
no output may be an input, two outputs may not share a name, none may exist
without `--overwrite`; and a clear "folder is not writable" comes before any
work (`require_writable_dir`).

Python has no atomic-write helper in its standard library; the `atomicwrites`
package that had one is archived, hence these few functions.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import secrets
import shutil
import sys
from typing import IO, Iterable, Iterator, Sequence

from deocc_jax import errors

# Leftover temporaries start with "." and contain this: never a numeric name that
# TF Serving would load, never an image or video extension a reader would pick up.
PARTIAL_TAG = ".partial-"


class NotWritableError(errors.UserError, PermissionError):
    """An output folder cannot be created or written (permissions, read-only file system)."""


def temp_sibling(path: str, tag: str = "partial") -> str:
    """A unique hidden name next to `path`, e.g. `dir/.name.partial-123-9f3a`.

    The extension of `path` is kept at the end, so encoders that choose the
    format by extension (OpenCV, FFmpeg) write the right one.
    """
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    if not stem:  # ".hidden" names: splitext gives no stem
        stem, ext = name, ""
    return os.path.join(folder, f".{stem}.{tag}-{os.getpid()}-{secrets.token_hex(3)}{ext}")


def fsync_dir(path: str) -> None:
    """Flushes a folder's entries (new names, renames) to disk; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and Windows) cannot fsync a folder
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def exists_message(path: str, flag: str | None = None) -> str:
    """The one line every writer refuses an existing output with."""
    return f"{flag + ' ' if flag else ''}{path}: exists; pass --overwrite to replace it"


def refuse_existing(path: str, *, overwrite: bool, flag: str | None = None) -> None:
    """Raises `errors.OutputExistsError` when `path` exists and `overwrite` is False.

    A folder where a file is to go is refused even with `overwrite`: replacing
    a folder (and all it holds) with a file is never what a flag meant.
    """
    if os.path.isdir(path) and not os.path.islink(path):
        raise errors.OutputExistsError(
            f"{flag + ' ' if flag else ''}{path}: is a folder, where a file would be written; "
            "name a file or another folder")
    if os.path.lexists(path) and not overwrite:
        raise errors.OutputExistsError(exists_message(path, flag))


def rename_no_replace(src: str, dst: str) -> None:
    """Renames the file `src` to `dst`, refusing when `dst` exists, in one step where possible.

    `renameat2(RENAME_NOREPLACE)` on Linux, else a hard link (which fails on an
    existing name) and removing `src`; only where neither works, a check and a
    rename.

    Raises:
      errors.OutputExistsError: `dst` exists (`src` is left as it was).
    """
    try:
        if _renameat2(src, dst, _RENAME_NOREPLACE):
            return
    except FileExistsError:
        raise errors.OutputExistsError(exists_message(dst)) from None
    try:
        os.link(src, dst)
    except FileExistsError:
        raise errors.OutputExistsError(exists_message(dst)) from None
    except OSError:  # no hard links here (some network and FAT file systems)
        if os.path.lexists(dst):
            raise errors.OutputExistsError(exists_message(dst)) from None
        os.rename(src, dst)
        return
    os.remove(src)


def publish_file(temp: str, final: str, *, replace: bool = False) -> None:
    """fsyncs a finished temporary file and renames it to `final`.

    Raises:
      errors.OutputExistsError: `final` exists and `replace` is False; `temp`
        is then left where it is (the caller decides what becomes of it).
    """
    _fsync_file(temp)
    if replace:
        os.replace(temp, final)
    else:
        rename_no_replace(temp, final)
    fsync_dir(os.path.dirname(os.path.abspath(final)))


def remove_quietly(path: str) -> None:
    """Removes a file or folder if it exists (cleanup after a failure)."""
    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "wb", *, overwrite: bool = False,
                **open_kwargs) -> Iterator[IO]:
    """Opens a temporary sibling of `path` for writing; renames it into place on success.

    On an exception the temporary file is removed and `path` is untouched. The
    folder is created when missing (an output folder appears with its first
    file, so a run that fails early leaves none behind).

    Args:
      path: the final file.
      mode: "wb" or "w" (text; pass encoding= etc. in open_kwargs).
      overwrite: replace an existing `path`; without it an existing `path` is
        refused before anything is written, and again at the final rename.

    Raises:
      errors.OutputExistsError: `path` exists and not `overwrite`.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_file writes; got mode {mode!r}")
    refuse_existing(path, overwrite=overwrite)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temp = temp_sibling(path)
    try:
        with open(temp, mode, **open_kwargs) as f:
            yield f
        publish_file(temp, path, replace=overwrite)
    except BaseException:
        remove_quietly(temp)
        raise


def write_bytes(path: str, data: bytes, *, overwrite: bool = False) -> None:
    """Writes `data` to `path` atomically (see `atomic_file` for `overwrite`)."""
    with atomic_file(path, "wb", overwrite=overwrite) as f:
        f.write(data)


def write_text(path: str, text: str, *, overwrite: bool = False) -> None:
    """Writes `text` (UTF-8) to `path` atomically (see `atomic_file` for `overwrite`)."""
    with atomic_file(path, "w", overwrite=overwrite, encoding="utf-8") as f:
        f.write(text)


def copy_file(src: str, dst: str, *, overwrite: bool = False) -> None:
    """Copies `src` to `dst` atomically (see `atomic_file` for `overwrite`)."""
    with atomic_file(dst, "wb", overwrite=overwrite) as out, open(src, "rb") as f:
        shutil.copyfileobj(f, out)


def _fsync_tree(root: str) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync_file(os.path.join(folder, name))
        fsync_dir(folder)


_RENAME_NOREPLACE = 1  # linux/fs.h
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2(a: str, b: str, flags: int) -> bool:
    """Linux renameat2; False where the OS or file system lacks it (other failures raise OSError)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:  # glibc < 2.28
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), b)
    raise OSError(err, os.strerror(err), b)


def exchange(a: str, b: str) -> bool:
    """Atomically swaps two existing paths (Linux renameat2 RENAME_EXCHANGE).

    Returns:
      True when swapped; False where the OS or file system cannot do it (the
      caller then falls back to two renames). Other failures raise OSError.
    """
    return _renameat2(a, b, _RENAME_EXCHANGE)


def publish_directory(staged: str, final: str, *, replace: bool = False) -> None:
    """Moves a complete folder `staged` to `final` (a sibling), durably.

    Every file is fsynced first, so what appears under `final` is on disk.
    An existing `final` is replaced only with `replace=True`: by an atomic
    exchange where Linux supports it (the final name always holds the old or
    the new folder), else by renaming the old folder to a hidden
    `.NAME.replaced-...` sibling first (a crash between the two renames leaves
    the old folder there, and nothing under the final name).

    Raises:
      errors.OutputExistsError: `final` exists and `replace` is False.
    """
    _fsync_tree(staged)
    parent = os.path.dirname(os.path.abspath(final))
    if os.path.lexists(final):
        if not replace:
            raise errors.OutputExistsError(exists_message(final))
        if exchange(staged, final):
            fsync_dir(parent)
            shutil.rmtree(staged)  # now holds the old folder
            return
        old = temp_sibling(final, "replaced")
        os.rename(final, old)
        os.rename(staged, final)
        fsync_dir(parent)
        shutil.rmtree(old)
        return
    # os.rename onto an existing non-empty folder fails, so a folder that
    # appeared meanwhile is never merged into.
    os.rename(staged, final)
    fsync_dir(parent)


def publish(staged: str, final: str, *, replace: bool = False) -> None:
    """`publish_directory` for a folder; for a file, fsync and rename (atomic replace).

    Raises:
      errors.OutputExistsError: `final` exists and `replace` is False.
    """
    if os.path.isdir(staged):
        publish_directory(staged, final, replace=replace)
        return
    if os.path.lexists(final) and not replace:
        raise errors.OutputExistsError(exists_message(final))
    if os.path.isdir(final):  # a file replacing a folder: rename() cannot do that in one step
        old = temp_sibling(final, "replaced")
        os.rename(final, old)
        publish_file(staged, final)
        shutil.rmtree(old)
        return
    publish_file(staged, final, replace=replace)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_partials(folder: str) -> list[str]:
    """Removes hidden temporaries (`.*.partial-PID-*`) left in `folder` by dead processes.

    Only names whose process is no longer running on this host are removed;
    a concurrent writer's temporaries are left alone.

    Returns:
      The paths removed.
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(".") or PARTIAL_TAG not in name:
            continue
        pid = name.split(PARTIAL_TAG, 1)[1].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            remove_quietly(os.path.join(folder, name))
            removed.append(os.path.join(folder, name))
    return removed


# ----------------------------------------------------------------------------- checks before work


def _same(a: str, b: str) -> bool:
    """Whether two paths name the same file or folder (by real path, or inode when both exist)."""
    if os.path.exists(a) and os.path.exists(b):
        with contextlib.suppress(OSError):
            return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def check_no_overlap(outputs: Iterable[str], inputs: Iterable[str], *, flag: str = "--output") -> None:
    """Refuses outputs that would replace an input, before anything is read or written.

    Paths are compared by real path (symlinks resolved) and, when both exist,
    by inode (hard links), so `--output` cannot reach an input by another name.

    Raises:
      errors.OutputExistsError: naming the output, the input and the flag.
    """
    inputs = list(inputs)
    real_inputs = {os.path.realpath(p): p for p in inputs}
    for out in outputs:
        hit = real_inputs.get(os.path.realpath(out))
        if hit is None:
            hit = next((p for p in inputs if os.path.exists(out) and _same(out, p)), None)
        if hit is not None:
            same = "is" if os.path.abspath(out) == os.path.abspath(hit) else "resolves to"
            raise errors.OutputExistsError(
                f"{flag} {out} {same} the input {hit}: writing it would destroy the input; "
                "choose another output")


def plan_outputs(outputs: Sequence[tuple[str, str]], inputs: Iterable[str] = (), *,
                 overwrite: bool = False, flag: str = "--output") -> None:
    """Checks every output of a run together, before anything is read or written.

    Args:
      outputs: (what, path) for each file the run may write; `what` names it for
        a reader ("the mask of in/x.jpg"). Alternatives of which only one is
        written (e.g. a restored photo or its unchanged copy) may be listed
        with the same `what`; they are not a collision with each other.
      inputs: the run's inputs, which no output may be (`check_no_overlap`).
      overwrite: whether existing outputs may be replaced.
      flag: the flag named in messages.

    Raises:
      errors.OutputExistsError: an output is an input; two outputs share a
        name (both named); an output exists and not `overwrite`; or a file's
        name is an existing folder.
    """
    outputs = list(outputs)
    check_no_overlap([p for _, p in outputs], inputs, flag=flag)
    seen: dict[str, str] = {}
    for what, path in outputs:
        key = os.path.normcase(os.path.realpath(path))
        if seen.get(key, what) != what:
            raise errors.OutputExistsError(
                f"{flag}: {seen[key]} and {what} would both be written to {path}; rename one of "
                "the inputs or choose other outputs")
        seen[key] = what
    for _, path in outputs:
        refuse_existing(path, overwrite=overwrite, flag=flag)


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def require_writable_dir(folder: str, *, flag: str = "--output", create: bool = True) -> None:
    """Proves that files can be written in `folder`, by creating one there.

    A permission check alone is not enough (root ignores permission bits, but
    not read-only file systems or immutable folders), so a hidden probe file is
    created and removed.

    Args:
      folder: the output folder.
      flag: the flag named in messages.
      create: create `folder` when missing; with False a missing folder is
        left to the first writer (`atomic_file` creates it), and its nearest
        existing parent is probed instead, so a run that stops before writing
        leaves no empty folder behind.

    Raises:
      NotWritableError: one line naming the folder, the flag and the reason.
    """
    folder = folder or "."
    if create:
        try:
            os.makedirs(folder, exist_ok=True)
        except FileExistsError:
            raise NotWritableError(f"{flag} {folder}: exists and is not a folder") from None
        except OSError as e:
            raise NotWritableError(
                f"{flag} {folder}: the folder cannot be created ({e.strerror})") from None
        where = folder
    else:
        where = _nearest_existing(folder)
        if not os.path.isdir(where):
            what = "" if where == os.path.abspath(folder) else f"{where} "
            raise NotWritableError(f"{flag} {folder}: {what}exists and is not a folder")
    probe = temp_sibling(os.path.join(where, "write-probe"))
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        what = "the folder is not writable" if where in (folder, os.path.abspath(folder)) else \
            f"the folder cannot be created in {where}"
        raise NotWritableError(f"{flag} {folder}: {what} ({e.strerror})") from None
    os.close(fd)
    remove_quietly(probe)
