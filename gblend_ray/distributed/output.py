"""Ray's own output during a run: to the run's log file instead of the terminal.

The driver's terminal shows the product's lines (progress, the error's cause). Ray's
output — the workers' forwarded stdout and stderr (their logs, warnings such as Ray
Train's "PlacementGroupCleaner ..." and tracebacks) and the driver-side ``ray``
loggers — goes to ``RUN_DIR/ray.log`` (``ray_output``), unless ``--verbose``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..storage.location import Location


@contextlib.contextmanager
def ray_output(log: Location | None) -> Iterator[None]:
    """Send Ray's own output — the workers' forwarded stdout and stderr (their logs and
    tracebacks) and the driver-side ``ray`` loggers — to the file ``log`` (appended)
    instead of the terminal, for the time of the block (the workers' output stays off
    the terminal after it: late lines go on to a local ``log``); ``log=None`` leaves it
    on the terminal (``--verbose``). The product's own lines are printed by the driver and are
    not affected."""
    if log is None:
        yield
        return
    local = log.local_path
    staged = Path(tempfile.mkstemp(prefix="gblend-ray-", suffix=".log")[1]) if local is None else local
    staged.parent.mkdir(parents=True, exist_ok=True)
    sink = open(staged, "a", encoding="utf-8")  # noqa: SIM115 - closed below
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    swapped = []
    for name in ("ray", "ray.data"):
        logger = logging.getLogger(name)
        olds = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)
                and getattr(h, "stream", None) in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)]
        for h in olds:
            logger.removeHandler(h)
        logger.addHandler(handler)
        swapped.append((logger, olds))
    dispatcher = _worker_log_dispatcher()
    if dispatcher is not None:
        with dispatcher._lock:
            dispatcher.handlers = [pair for pair in dispatcher.handlers if pair[0] != "ray_print_logs"]
        dispatcher.add_handler("gblend_run_log", functools.partial(_write_worker_lines, sink))
    try:
        yield
    except BaseException:
        # The command ends on its error line: what the workers still print as the run is
        # torn down goes to the log too, never after that line on the terminal.
        if local is None:
            log.write_bytes(staged.read_bytes())
        raise
    if dispatcher is not None:
        # Workers' last lines (an actor's flush as it is torn down) can arrive after the
        # run ended: they go on to the log, never onto the terminal below the result line.
        dispatcher.remove_handler("gblend_run_log")
        if local is not None:
            dispatcher.add_handler("gblend_run_log", functools.partial(_append_worker_lines, local))
    for logger, olds in swapped:
        logger.removeHandler(handler)
        for h in olds:
            logger.addHandler(h)
    sink.close()
    if local is None:
        log.write_bytes(staged.read_bytes())
        staged.unlink(missing_ok=True)


def _worker_log_dispatcher():
    """Where the driver's log-forwarding thread hands each batch of worker output (a
    private Ray object: without it, worker output stays on the terminal)."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher
    except ImportError:
        return None
    ok = all(hasattr(global_worker_stdstream_dispatcher, a) for a in ("handlers", "_lock", "add_handler"))
    return global_worker_stdstream_dispatcher if ok else None


def _write_worker_lines(sink, data: dict) -> None:
    who = data.get("actor_name") or data.get("task_name") or "worker"
    prefix = f"({who} pid={data.get('pid')}, ip={data.get('ip')}) "
    try:
        sink.write("".join(prefix + line + "\n" for line in data.get("lines", ())))
        sink.flush()
    except ValueError:  # closed: output that arrives after the block ends
        pass


def _append_worker_lines(path: Path, data: dict) -> None:
    with open(path, "a", encoding="utf-8") as sink:
        _write_worker_lines(sink, data)
