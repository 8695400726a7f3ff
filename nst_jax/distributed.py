"""Starting JAX's multi-process runtime: explicit flags or launcher auto-detection, checked first.

One process per host (or per accelerator) runs the same command; :func:`initialize` connects them
through a coordinator (process 0) before any JAX computation. Two ways to say where it is:

* explicitly, ``--coordinator-address HOST:PORT --num-processes N --process-id I`` on every
  process (the same address and N everywhere, I = 0 .. N-1);
* ``--distributed`` alone, which lets :func:`jax.distributed.initialize` read them from the
  launcher: SLURM (``srun``), Open MPI (``mpirun``), Kubernetes (JobSet), Cloud TPU.

Everything that can be checked without the network is checked before JAX is called, so a typo is
a one-line :class:`~nst_jax.errors.ConfigError` rather than a five-minute hang. The connection
itself waits at most ``timeout_s`` for the other processes (JAX's ``initialization_timeout``),
then fails with a message that names what to check. After connecting, every process compares its
``num_processes`` with process 0's through the coordinator's key-value store (JAX does not: a
process started with a different N would otherwise join and compute the wrong share), and
:func:`agree` does the same for any run settings the caller names.

On CPU the processes exchange data with gloo collectives over TCP, which is what lets tests run
several processes on one machine.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable

import jax

from nst_jax.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300
"""Seconds to wait for all processes to connect (JAX's own default is the same)."""

CPU_COLLECTIVES = "gloo"
"""Cross-process collectives used on CPU (``jax_cpu_collectives_implementation``)."""

_KEY_PREFIX = "nst_jax"
_JAX_GRACE_S = 30  # JAX aborts this long after on_stall is due
_LAUNCHERS = "SLURM (srun), Open MPI (mpirun), Kubernetes or Cloud TPU"
_EXPLICIT = "--coordinator-address HOST:PORT --num-processes N --process-id I"


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """Where this process stands: ``index`` in ``0 .. count - 1`` (JAX's process index and count)."""

    index: int = 0
    count: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this is process 0, the one that writes shared files."""
        return self.index == 0


def parse_address(address: str) -> tuple[str, int]:
    """Splits ``HOST:PORT`` (``[v6]:PORT`` for IPv6) and checks the port.

    Raises:
      ConfigError: no port, a port outside 1..65535, or an empty host.
    """
    host, sep, port = address.rpartition(":")
    fix = "give HOST:PORT, e.g. 10.0.0.1:1234 (the address of process 0 and a free port on it)"
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--coordinator-address {address!r} is not HOST:PORT; {fix}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ConfigError(f"--coordinator-address {address!r} has a bad IPv6 host; {fix}") from None
    elif ":" in host:
        raise ConfigError(f"--coordinator-address {address!r}: write an IPv6 host in brackets, "
                          f"[{host}]:{port}")
    if not 1 <= int(port) <= 65535:
        raise ConfigError(f"--coordinator-address port {port} is outside 1..65535; {fix}")
    return host, int(port)


def check_arguments(coordinator_address: str | None, num_processes: int | None, process_id: int | None,
                    *, auto: bool = False) -> bool:
    """Validates the process flags before anything touches JAX; returns whether to initialize.

    Without ``auto`` the three values must come together (or all be None: one process). With
    ``auto`` any of them may be None (the launcher supplies it) and those given override it.

    Raises:
      ConfigError: a value missing, out of range, or unparsable, with the flags that work.
    """
    given = {"--coordinator-address": coordinator_address, "--num-processes": num_processes,
             "--process-id": process_id}
    missing = [flag for flag, value in given.items() if value is None]
    if not auto and len(missing) == len(given):
        return False
    if not auto and missing:
        raise ConfigError(f"{' and '.join(missing)} missing; a multi-process run needs all of {_EXPLICIT} "
                          f"on every process, or --distributed alone under {_LAUNCHERS}")
    if num_processes is not None and num_processes < 1:
        raise ConfigError(f"--num-processes must be >= 1, got {num_processes}")
    if process_id is not None and process_id < 0:
        raise ConfigError(f"--process-id must be >= 0, got {process_id}")
    if process_id is not None and num_processes is not None and process_id >= num_processes:
        raise ConfigError(f"--process-id {process_id} is out of range for --num-processes {num_processes}; "
                          f"number the processes 0 to {num_processes - 1}")
    if coordinator_address is not None:
        parse_address(coordinator_address)
    return True


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def wait_for_coordinator(address: str, timeout_s: float, *, poll_s: float = 0.25) -> None:
    """Waits until something accepts TCP connections at ``address``, for at most ``timeout_s``.

    Processes other than 0 call this before JAX: JAX's own client, when the coordinator never
    answers, aborts the whole process with a C++ fatal log instead of raising.

    Raises:
      ConfigError: nothing listened at ``address`` within ``timeout_s``.
    """
    host, port = parse_address(address)
    host = host.strip("[]")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(1.0, timeout_s))):
                return
        except OSError as err:
            if time.monotonic() + poll_s >= deadline:
                raise ConfigError(
                    f"no coordinator answered at {address} within {timeout_s:g} s ({err.strerror or err}); "
                    "start process 0 (--process-id 0) with the same --coordinator-address, check the "
                    "host and port and any firewall, or raise the timeout") from None
            time.sleep(poll_s)


def _stall_message(timeout_s: float, num_processes: int | None) -> str:
    n = f"all {num_processes}" if num_processes else "all"
    return (f"{n} processes did not connect within {timeout_s:g} s; start every process with the same "
            "--coordinator-address and --num-processes and a distinct --process-id, or check the launcher")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False,
               timeout_s: float = DEFAULT_TIMEOUT_S,
               on_stall: Callable[[str], None] | None = None) -> ProcessInfo:
    """Joins this process to the others (or does nothing for a single process); call before any JAX work.

    Args:
      coordinator_address: ``HOST:PORT`` of process 0's coordinator service.
      num_processes: total number of processes N.
      process_id: this process's index, 0 .. N-1.
      auto: let JAX detect unset values from the launcher (SLURM, Open MPI, Kubernetes, Cloud TPU).
      timeout_s: how long to wait for the coordinator and for every process to connect.
      on_stall: called (from a timer thread, with a one-line message) when the connection has not
        completed after ``timeout_s``. JAX gives up ``_JAX_GRACE_S`` later by aborting the process
        with a C++ log, which cannot be caught; a command line passes a function that prints the
        message and exits, so the user sees one line instead.

    Returns:
      This process's :class:`ProcessInfo`; ``ProcessInfo(0, 1)`` when no flag asks for several.

    Raises:
      ConfigError: bad or missing flags (checked before JAX is called), a launcher that cannot be
        detected, a coordinator that did not answer within ``timeout_s``, or processes that
        disagree on ``num_processes``.
    """
    if not check_arguments(coordinator_address, num_processes, process_id, auto=auto):
        return ProcessInfo()
    if not timeout_s > 0:
        raise ConfigError(f"the connection timeout must be > 0 s, got {timeout_s}")
    if jax.distributed.is_initialized():
        info = ProcessInfo(jax.process_index(), jax.process_count())
        if num_processes is not None and info.count != num_processes:
            raise ConfigError(f"JAX is already initialized with {info.count} processes, not {num_processes}")
        return info
    if coordinator_address is not None and process_id not in (None, 0):
        wait_for_coordinator(coordinator_address, timeout_s)
    jax.config.update("jax_cpu_collectives_implementation", CPU_COLLECTIVES)
    timer = None
    if on_stall is not None:
        timer = threading.Timer(timeout_s, on_stall, args=(_stall_message(timeout_s, num_processes),))
        timer.daemon = True
        timer.start()
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   initialization_timeout=int(timeout_s + _JAX_GRACE_S))
    except (RuntimeError, ValueError, TypeError) as err:
        # Missing launcher variables are a ValueError; a failed connection is a JaxRuntimeError
        # (a RuntimeError) on the versions that raise instead of aborting.
        if coordinator_address is None and num_processes is None and process_id is None:
            hint = (f"no launcher detected: run under {_LAUNCHERS}, or pass {_EXPLICIT} instead of "
                    "--distributed")
        else:
            hint = _stall_message(timeout_s, num_processes)
        raise ConfigError(f"could not start the multi-process run ({_one_line(err)}); {hint}") from None
    finally:
        if timer is not None:
            timer.cancel()
    info = ProcessInfo(jax.process_index(), jax.process_count())
    # JAX never compares N across processes: a process given a larger N joins if its id is in range.
    agree("num_processes", str(num_processes if num_processes is not None else info.count), info,
          timeout_s=timeout_s, flag="--num-processes")
    return info


def _client():
    from jax._src import distributed as jax_distributed  # the runtime client has no public accessor

    return jax_distributed.global_state.client


def agree(name: str, value: str, info: ProcessInfo, *, timeout_s: float = DEFAULT_TIMEOUT_S,
          flag: str | None = None) -> None:
    """Checks that every process holds the same ``value`` for ``name``; all of them raise if not.

    Each process publishes its value in the coordinator's key-value store, waits until all have
    (a barrier), reads them all and compares with process 0's. Every process sees the same values,
    so they all stop together instead of one waiting forever for another that gave up.

    Raises:
      ConfigError: a process's value differs from process 0's (naming both), or not every process
        arrived within ``timeout_s``.
    """
    if info.count == 1:
        return
    client = _client()
    prefix = f"{_KEY_PREFIX}/agree/{name}"
    client.key_value_set(f"{prefix}/{info.index}", value)
    barrier(f"agree/{name}", info, timeout_s=timeout_s)
    values = {int(key.rpartition("/")[2]): v for key, v in client.key_value_dir_get(prefix)}
    # Nobody raises (and exits, taking the coordinator with it when it is process 0) before every
    # process has read the values: each then gives the same one-line error.
    barrier(f"agree/{name}/read", info, timeout_s=timeout_s)
    differ = sorted(i for i, v in values.items() if v != values.get(0))
    if differ:
        what = flag or name
        i = differ[0]
        raise ConfigError(f"process {i} has {what} {values[i]} but process 0 has {values.get(0)}; start "
                          f"every process with the same {what}")


def barrier(name: str, info: ProcessInfo, *, timeout_s: float) -> None:
    """Waits until every process reaches the barrier ``name`` (no-op for one process).

    Raises:
      ConfigError: some process did not arrive within ``timeout_s`` (it died or is still busy).
    """
    if info.count == 1:
        return
    try:
        _client().wait_at_barrier(f"{_KEY_PREFIX}/{name}", int(timeout_s * 1000))
    except RuntimeError as err:
        raise ConfigError(f"not every process reached {name} within {timeout_s:g} s ({_one_line(err)}); "
                          "rerun the same command on every process to finish") from None


__all__ = ["CPU_COLLECTIVES", "DEFAULT_TIMEOUT_S", "ProcessInfo", "agree", "barrier", "check_arguments",
           "initialize", "parse_address", "wait_for_coordinator"]
