"""A failed run's root cause, out of the wrappers Ray puts around it.

An error raised in a Ray Train worker reaches the driver inside a ``TrainingFailedError``
(its ``worker_failures``, each a ``RayTaskError`` that wraps the worker's exception), one
raised in a Tune trial inside a ``TuneError`` or the trial's ``RayTaskError``; their
messages carry every remote traceback. ``root_cause`` digs out the first exception that
is not such a wrapper, so a command can end on one line that says what went wrong
(the diverged epoch, the bad file, the missing resource) and keep the tracebacks for
the run's log.
"""

from __future__ import annotations

from ray.exceptions import RayError, RayTaskError

_WRAPPER_NAMES = ("TrainingFailedError", "WorkerGroupError", "ControllerError", "TuneError", "RayTaskError",
                  "ProbeRoundError")


def _inner(err: BaseException) -> BaseException | None:
    """The exception ``err`` wraps, if it is one of Ray's (or the coordinator's) wrappers."""
    if isinstance(err, RayTaskError):
        cause = getattr(err, "cause", None)
        if cause is not None and cause is not err:
            return cause
    for attr in ("worker_failures",):
        failures = getattr(err, attr, None)
        if isinstance(failures, dict) and failures:
            return next(iter(failures.values()))
    for attr in ("controller_failure", "cause"):
        inner = getattr(err, attr, None)
        if isinstance(inner, BaseException) and inner is not err:
            return inner
    if type(err).__name__ in _WRAPPER_NAMES or isinstance(err, RayError):
        return err.__cause__ if err.__cause__ is not err else None
    return None


def root_cause(err: BaseException) -> BaseException:
    seen: set[int] = set()
    while id(err) not in seen:
        seen.add(id(err))
        inner = _inner(err)
        if inner is None:
            break
        err = inner
    return err


def describe_failure(err: BaseException) -> str:
    """One line: the root cause's message (its first line), with its type when the
    message alone would not say what happened."""
    root = root_cause(err)
    text = str(root).strip()
    if isinstance(root, RayTaskError) or type(root).__name__ in _WRAPPER_NAMES:
        # no inner exception to show: the last line of a remote traceback is its cause
        lines = [line for line in text.splitlines() if line.strip()]
        text = lines[-1].strip() if lines else type(root).__name__
    first = text.splitlines()[0] if text else ""
    if not first:
        return type(root).__name__
    ours = isinstance(root, (FloatingPointError, ValueError))  # our messages say what failed and where
    return first if ours else f"{type(root).__name__}: {first}"
