"""What the console scripts share: logging set-up, the model options, and one-line errors.

Errors a user can fix (a missing file, a bad setting, a damaged bag) end a console script with ONE line on
stderr, ``PROG: error: MESSAGE`` (whitespace of the message collapsed), and the script's error exit code
(1, or 2 for the scripts that have always used 2); argparse usage errors exit 2 as argparse does.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
BACKENDS = ("torch", "onnxruntime", "tensorrt")  # tscm_ros.describer.BACKENDS (not imported: it needs torch)
DEVICE_HELP = "auto | cpu | cuda | cuda:N"

ErrorTypes = type[BaseException] | tuple[type[BaseException], ...]


def setup_logging(level: int = logging.INFO, fmt: str = LOG_FORMAT, *, verbose: bool = False) -> None:
    """``logging.basicConfig`` for a console script (``verbose`` lowers the level to DEBUG)."""
    logging.basicConfig(level=logging.DEBUG if verbose else level, format=fmt)


def one_line(message: object) -> str:
    """``str(message)`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(message).split())


def fail(prog: str | None, error: object, *, code: int = 1, prefix: str = "error: ", hint: str = "") -> int:
    """Print ``PROG: PREFIX MESSAGE HINT`` as one line on stderr (no ``PROG:`` when None); return ``code``."""
    head = f"{prog}: " if prog else ""
    print(f"{head}{prefix}{one_line(error)}{hint}", file=sys.stderr, flush=True)
    return code


def run_reporting(
    prog: str | None,
    work: Callable[[], int],
    errors: ErrorTypes,
    *,
    code: int = 1,
    prefix: str = "error: ",
    hints: Sequence[tuple[ErrorTypes, str]] = (),
    reraise: bool = False,
) -> int:
    """Run ``work``; an exception of ``errors`` becomes one stderr line (:func:`fail`) and exit ``code``.

    ``hints``: (exception types, text appended to the line) checked in order, e.g. what --allow-partial does
    for a damaged bag. ``reraise`` (a --verbose run) lets the exception and its traceback through."""
    try:
        return work()
    except errors as error:
        if reraise:
            raise
        hint = next((text for kinds, text in hints if isinstance(error, kinds)), "")
        return fail(prog, error, code=code, prefix=prefix, hint=hint)


def add_device_option(parser: argparse.ArgumentParser, help: str | None = None) -> None:  # noqa: A002
    """``--device`` (default auto): auto | cpu | cuda | cuda:N."""
    parser.add_argument("--device", default="auto", help=help)


def add_batch_size_option(parser: argparse.ArgumentParser) -> None:
    """``--batch-size`` (default 8): images per network call."""
    parser.add_argument("--batch-size", type=int, default=8)


def add_backend_option(
    parser: argparse.ArgumentParser,
    choices: Sequence[str] = BACKENDS,
    default: str | None = "torch",
    help: str | None = None,  # noqa: A002
) -> None:
    """``--backend``: one of :data:`BACKENDS` (or the subset a script supports)."""
    parser.add_argument("--backend", default=default, choices=choices, help=help)


def add_precision_option(
    parser: argparse.ArgumentParser,
    choices: Sequence[str],
    help: str,  # noqa: A002
) -> None:
    """``--precision`` (default None: the script's own default, see :mod:`tscm_ros.precision`)."""
    parser.add_argument("--precision", default=None, choices=choices, help=help)
