"""A pytest plugin that keeps the suite's traffic on loopback, checked in-process.

Why in-process: a test that sends a prompt (or a key) to a remote host must be caught even when
the host is unreachable and promptfit turns the failure into a quiet "recorded failure", so
listening somewhere else would prove nothing. Every ``socket.connect``/``connect_ex`` to an
address that is not loopback, and every ``getaddrinfo`` of a name that is not this machine's,
is refused (``ConnectionRefusedError``/``socket.gaierror``) and recorded; the test during which
it happened then fails in its teardown, naming the address, even if the code under test
swallowed the error.

Enabled from ``tests/conftest.py`` with ``pytest_plugins = ["tests._network_guard"]``. Servers
the tests start in subprocesses (the fake LLM server, MLflow) are not patched; they only listen
on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

__all__ = ["expect_refusal", "is_loopback_host", "violations"]

_lock = threading.Lock()
_violations: list[str] = []
_original_connect = socket.socket.connect
_original_connect_ex = socket.socket.connect_ex
_original_getaddrinfo = socket.getaddrinfo
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def _own_names() -> set[str]:
    names = set(_LOCAL_NAMES)
    with contextlib.suppress(OSError):
        names.add(socket.gethostname().lower())
    with contextlib.suppress(OSError):
        names.add(socket.getfqdn().lower())
    return names


_OWN = _own_names()


def is_loopback_host(host: Any) -> bool:
    """Whether connecting to ``host`` stays on this machine."""
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    name = host.strip("[]").split("%", 1)[0].lower()
    if name in _LOCAL_NAMES or name == "":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def _record(what: str) -> None:
    with _lock:
        _violations.append(what)


def violations() -> list[str]:
    """Refused attempts so far (a copy)."""
    with _lock:
        return list(_violations)


def _check_address(sock: socket.socket, address: Any) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
        host = address[0]
        if not is_loopback_host(host):
            _record(f"connect to {host}:{address[1]}")
            raise ConnectionRefusedError(
                f"tests/_network_guard.py: connection to {host}:{address[1]} refused (the test "
                "suite only talks to loopback)"
            )


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _check_address(self, address)
    return _original_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _check_address(self, address)
    return _original_connect_ex(self, address)


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    name = host.decode("ascii", "replace") if isinstance(host, bytes) else host
    if isinstance(name, str):
        bare = name.strip("[]").split("%", 1)[0].lower()
        try:
            ipaddress.ip_address(bare)
            literal = True
        except ValueError:
            literal = False
        # IP literals are judged at connect(); names must be this machine's own.
        if not literal and bare not in _OWN and not is_loopback_host(bare):
            _record(f"getaddrinfo({name!r})")
            raise socket.gaierror(
                socket.EAI_NONAME,
                f"tests/_network_guard.py: name lookup of {name!r} refused (the test suite only "
                "talks to loopback)",
            )
    return _original_getaddrinfo(host, *args, **kwargs)


def install() -> None:
    """Patch the socket module (idempotent)."""
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = _guarded_getaddrinfo


@contextlib.contextmanager
def expect_refusal() -> Iterator[list[str]]:
    """For tests of the guard itself: collect (and forgive) the refusals made inside."""
    with _lock:
        start = len(_violations)
    caught: list[str] = []
    try:
        yield caught
    finally:
        with _lock:
            caught.extend(_violations[start:])
            del _violations[start:]


def pytest_configure(config: pytest.Config) -> None:
    install()


@pytest.fixture(autouse=True)
def _no_traffic_beyond_loopback() -> Iterator[None]:
    with _lock:
        start = len(_violations)
    yield
    with _lock:
        new = _violations[start:]
    if new:
        pytest.fail(
            "The test tried to reach the network beyond loopback: " + "; ".join(new), pytrace=False
        )
