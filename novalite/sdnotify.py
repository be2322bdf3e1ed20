"""systemd's readiness protocol (``Type=notify``): state lines sent to ``$NOTIFY_SOCKET``.

The socket is an AF_UNIX datagram socket; a name starting with ``@`` is in the
abstract namespace (a leading NUL byte). Without ``NOTIFY_SOCKET`` (not run by
systemd) every call does nothing.
"""

from __future__ import annotations

import os
import socket


def notify(*states: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``states`` (e.g. ``"READY=1"``, ``"STATUS=serving"``) as one datagram; whether it was sent.

    A socket that is gone or refuses is not an error worth stopping for: False."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "@/":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    payload = "\n".join(s.replace("\n", " ") for s in states).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(payload, address)
        except OSError:
            return False
    return True
