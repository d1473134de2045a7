"""A quiet start for the command line.

TensorFlow prints its CUDA probes and plugin registrations through absl while it
is imported, before ``TF_CPP_MIN_LOG_LEVEL`` is read: dozens of lines around a
CPU run's progress bar. When the process is ``xnor-larq`` (the console script or
``python -m xnor_larq.cli``) and neither ``--verbose``/``-v`` nor
``TF_CPP_MIN_LOG_LEVEL`` was given, stderr is pointed at /dev/null for that
import alone and later C++ logs are kept to fatal ones; Python warnings and
errors are untouched. Importing xnor_larq as a library changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys


def is_quiet_cli() -> bool:
    # While `python -m xnor_larq.cli` imports the package, sys.argv[0] is "-m":
    # the interpreter's own arguments tell.
    argv = list(getattr(sys, "orig_argv", sys.argv))
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else None
    cli = program in ("xnor-larq", "xnor-larq.exe") or module == "xnor_larq.cli"
    verbose = "--verbose" in argv or "-v" in argv
    return cli and not verbose and "TF_CPP_MIN_LOG_LEVEL" not in os.environ


@contextlib.contextmanager
def quiet_tensorflow_import():
    """Silence stderr's C++ lines while TensorFlow loads (command line only)."""
    if not is_quiet_cli():
        yield
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
