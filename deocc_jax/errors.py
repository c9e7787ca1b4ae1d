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
"""

from __future__ import annotations

import logging as std_logging
import sys
from typing import Callable, Sequence

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

    app.run(guarded, **kwargs)
