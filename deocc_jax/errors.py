"""User errors, and how every deocc binary reports them and its progress.

A `UserError` is a mistake the user can fix (a missing file, a bad flag, input
that cannot be used). Its message is one line that names the file or flag and
the reason. Binaries started with `run(main)` print that line and exit with
`EXIT_USER_ERROR` instead of a traceback; `--verbosity=1` (or higher) shows the
traceback too, for bug reports. `run` also keeps libraries' INFO chatter
(orbax writes dozens of lines per checkpoint) off the console, so deocc's own
progress lines stay readable; `--verbosity=1` brings it back.

The subclasses also derive from the built-in exception a caller would expect
(`FileNotFoundError`, `FileExistsError`, `ValueError`), so code that catches
those keeps working.

SIGINT and SIGTERM end a binary the same way (`StopSignals`): the signal only
asks the run to stop, and the run stops where that is safe (between frames,
between photos, after a model call returns), closes what it has open, and
raises `Interrupted`, whose one line `run` prints before exiting with 128 + the
signal's number (130, 143). A signal is never turned into an exception inside
native code: a KeyboardInterrupt raised out of a jitted call (XLA compiling or
running the model, with threads of its own) followed by the interpreter's exit
crashed `infer` with a segmentation fault; with a stop request the model call
always returns before the run ends.
"""

from __future__ import annotations

import logging as std_logging
import os
import signal
import sys
import threading
from typing import Any, Callable, Sequence

from absl import app, logging

EXIT_USER_ERROR = 2  # what absl's UsageError also exits with
# Libraries whose INFO lines are hidden at the default verbosity (path fragments of their files).
QUIET_LIBRARIES = ("/orbax/", "/grain/", "/tensorflow/", "/jax/_src/", "/etils/")


class UserError(Exception):
    """A mistake the user can fix; the message is one line naming the file/flag and the reason."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A file, folder, checkpoint or model the user named does not exist."""


class OutputExistsError(UserError, FileExistsError):
    """An output would replace something that exists (pass --overwrite) or an input."""


class InvalidInputError(UserError, ValueError):
    """An input or flag value that cannot be used (wrong shape, range, format...)."""


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped a run after it closed what it had open.

    The message says what was kept (or that nothing was written); a binary
    exits with `exit_code`, 128 + the signal's number.
    """

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """SIGINT and SIGTERM become a request to stop, which the run checks where stopping is safe.

    A context manager; the previous handlers come back on exit. A signal that
    was ignored when the program started (SIGINT of a job started with `&` by
    a script) stays ignored, as Python itself would leave it. Outside the main
    thread no handler can be installed and nothing is requested.

        with errors.StopSignals() as stop:
            for item in work:
                if stop.requested:
                    break  # close outputs, then raise stop.interrupted("...")
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> "StopSignals":
        """Takes over the signals now (again a no-op while installed); `__exit__` gives them back."""
        if not self._previous and threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __enter__(self) -> "StopSignals":
        return self.install()

    def _handle(self, signum: int, frame) -> None:
        del frame
        if self.signum is None:
            self.signum = signum
            # os.write: print() from a handler can hit a reentrant call on the same stream.
            os.write(2, f"{self.name}: stopping once the current step is done\n".encode())

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def interrupted(self, message: str) -> Interrupted:
        """The `Interrupted` to raise once the run has closed its outputs."""
        return Interrupted(self.signum or signal.SIGINT, f"stopped by {self.name}: {message}")

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


def one_line(error: BaseException) -> str:
    """The error's message on a single line (later lines joined with ' | ')."""
    text = " | ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text or type(error).__name__


class _QuietLibraries(std_logging.Filter):
    """Drops INFO records logged from QUIET_LIBRARIES' files; warnings always pass."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or not any(
            part in record.pathname for part in QUIET_LIBRARIES)


def run(main: Callable[[Sequence[str]], object], **kwargs) -> None:
    """`absl.app.run(main)`, with `UserError`s reported as one line and exit code 2.

    Args:
      main: the binary's main(argv).
      **kwargs: passed to `absl.app.run` (e.g. flags_parser).
    """
    def guarded(argv):
        if logging.get_verbosity() < logging.DEBUG:
            logging.get_absl_handler().addFilter(_QuietLibraries())
        try:
            return main(argv)
        except UserError as e:
            if logging.get_verbosity() >= logging.DEBUG:
                raise
            print(f"error: {one_line(e)}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except Interrupted as e:
            print(one_line(e), file=sys.stderr)
            sys.exit(e.exit_code)

    app.run(guarded, **kwargs)
