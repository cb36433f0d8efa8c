"""The router's port check: a listener is in the way, a closed connection's TIME_WAIT is not."""

from __future__ import annotations

import socket

import pytest

from kiln.errors import PortInUse
from kiln.router.haproxy import _check_port_free


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_a_listening_port_is_in_use():
    with _listener() as sock:
        with pytest.raises(PortInUse, match="already in use"):
            _check_port_free("127.0.0.1", sock.getsockname()[1])


def test_a_port_left_in_time_wait_is_free():
    """The server side closes first, as HAProxy does when it is killed: its port keeps a
    TIME_WAIT connection for a minute once the listener is gone."""
    listener = _listener()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    served.close()
    client.recv(1)  # the server's FIN
    client.close()
    listener.close()
    plain = socket.socket()
    with pytest.raises(OSError):  # what the check met before it set SO_REUSEADDR
        plain.bind(("127.0.0.1", port))
    plain.close()
    _check_port_free("127.0.0.1", port)
