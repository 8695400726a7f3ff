"""Checks of the process flags that run before JAX is touched (the 2-process runs are in test_dataset.py)."""

from __future__ import annotations

import socket
import time

import pytest

from nst_jax import distributed
from nst_jax.errors import ConfigError


def test_no_flags_means_one_process_without_touching_jax():
    assert distributed.initialize() == distributed.ProcessInfo(0, 1)
    assert distributed.ProcessInfo().is_main


@pytest.mark.parametrize("args, needle", [
    (("127.0.0.1:1234", 2, None), "--process-id missing"),
    ((None, 2, 0), "--coordinator-address missing"),
    (("127.0.0.1:1234", None, None), "--num-processes and --process-id missing"),
    (("127.0.0.1:1234", 2, 2), "--process-id 2 is out of range for --num-processes 2"),
    (("127.0.0.1:1234", 2, -1), "--process-id must be >= 0"),
    (("127.0.0.1:1234", 0, 0), "--num-processes must be >= 1"),
    (("127.0.0.1", 2, 0), "is not HOST:PORT"),
    (("127.0.0.1:http", 2, 0), "is not HOST:PORT"),
    ((":1234", 2, 0), "is not HOST:PORT"),
    (("127.0.0.1:70000", 2, 0), "outside 1..65535"),
    (("::1:1234", 2, 0), "in brackets, [::1]:1234"),
    (("[zz::1]:1234", 2, 0), "bad IPv6 host"),
])
def test_bad_flags_are_one_line_errors_before_jax(args, needle):
    with pytest.raises(ConfigError) as err:
        distributed.initialize(*args)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_auto_accepts_partial_flags_but_still_checks_them():
    assert distributed.check_arguments(None, None, None, auto=True)
    assert distributed.check_arguments(None, 4, 3, auto=True)
    with pytest.raises(ConfigError, match="out of range"):
        distributed.check_arguments(None, 4, 4, auto=True)


def test_valid_addresses_parse():
    assert distributed.parse_address("10.0.0.1:1234") == ("10.0.0.1", 1234)
    assert distributed.parse_address("[::1]:80") == ("[::1]", 80)
    assert distributed.parse_address("node-7.cluster:65535") == ("node-7.cluster", 65535)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_coordinator_fails_within_the_timeout():
    start = time.monotonic()
    with pytest.raises(ConfigError, match="no coordinator answered at 127.0.0.1:.* within 1 s"):
        distributed.wait_for_coordinator(f"127.0.0.1:{_closed_port()}", 1.0, poll_s=0.1)
    assert time.monotonic() - start < 5


def test_listening_coordinator_is_found():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        distributed.wait_for_coordinator(f"127.0.0.1:{s.getsockname()[1]}", 2.0)
