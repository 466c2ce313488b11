"""One clear line for an expected error in every console script; the Python trace one flag away.

An expected error is the user's to fix: a missing or damaged store, a file that is not a protege
checkpoint, a bad or missing override, a config value out of range. :func:`run` prints it as
``<tool>: error: <what>`` and exits 2. ``--traceback`` anywhere on the command line (it is taken
out before hydra parses the overrides) shows the full trace instead; so does
``PROTEGE_TRACEBACK=1``.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable

EXIT_USAGE = 2


# Matched by name, not imported: importing torch while a tool exits (after MuJoCo's EGL context)
# can crash the interpreter, and a tool that never needed torch should not load it to report.
_EXPECTED_NAMES = {"HydraException", "OmegaConfBaseException", "StoreError", "CheckpointError",
                   "PretrainedWeightsError", "CompileError", "FileNotFoundError", "ValueError"}


def is_expected(e: BaseException) -> bool:
    """An error for the user to fix (see the module docstring), not a bug."""
    return isinstance(e, Exception) and any(
        c.__name__ in _EXPECTED_NAMES and c.__module__.split(".")[0] in ("builtins", "protege", "hydra", "omegaconf")
        for c in type(e).__mro__)


def root_cause(e: BaseException) -> BaseException:
    """The error under hydra's InstantiationException wrappers (one per nested instantiate)."""
    while type(e).__name__ == "InstantiationException" and e.__cause__ is not None:
        e = e.__cause__
    return e


def one_line(e: BaseException) -> str:
    """The error's first line, with omegaconf's full key (``train.stepz``) when it has one."""
    cause = root_cause(e)
    text = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    inner = cause.__cause__
    if type(cause).__module__.startswith("hydra") and inner is not None and str(inner).strip():
        # hydra: "Could not override 'x'." + omegaconf's reason
        text = f"{text.rstrip('.')}: {str(inner).strip().splitlines()[0]}"
        cause = inner
    key = getattr(cause, "full_key", None)
    return f"{text} ({key})" if key and str(key) not in text else text


_state = {"tool": "protege", "traceback": False}


def _report(e: BaseException) -> None:
    if _state["traceback"]:
        raise e
    print(f"{_state['tool']}: error: {one_line(e)} (--traceback for the trace)", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def job(fn: Callable) -> Callable:
    """Decorate a hydra task function (under ``@hydra.main``) so that an expected error raised in
    it is reported in one line (hydra would first print 'Error executing job ...')."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not is_expected(e):
                raise
            _report(e)
    return wrapper


def run(tool: str, main: Callable[[], object]) -> None:
    """Run a hydra ``main`` with one-line expected errors (exit 2); see the module docstring.
    Errors of composing the config (a bad override) are caught here; those of the job, by :func:`job`."""
    _state.update(tool=tool, traceback="--traceback" in sys.argv or os.environ.get("PROTEGE_TRACEBACK") == "1")
    sys.argv = [a for a in sys.argv if a != "--traceback"]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # hydra re-raises instead of printing its own report
    try:
        main()
    except BrokenPipeError:  # `protege-train --help | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot raise again
        sys.exit(141)
    except Exception as e:
        if not is_expected(e):
            raise
        _report(e)
