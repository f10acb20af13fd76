"""Why an ``rtsp://`` URL does not open: one RTSP DESCRIBE over TCP, asked only after OpenCV failed to open it.

OpenCV's ``VideoCapture`` says only "not opened", whatever went wrong; this names the cause so that the error is one
line the user can act on: a refused port, a host that does not answer, a port that accepts but is not RTSP, a path
the server does not have (404), credentials (401). Written here because it is one request and one status line
(RFC 2326 section 10.2 DESCRIBE, 7.1 Status-Line): no RTSP client library is needed for that, and the runtime's
dependencies stay numpy, OpenCV and ONNX Runtime.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit, urlunsplit

DEFAULT_PORT = 554


def why_not_open(url: str, timeout_s: float) -> str | None:
    """A short reason why ``url`` cannot be opened, or None when the server offers the stream (or for rtsps://,
    which needs TLS: then the cause lies elsewhere). Waits at most about 2 x ``timeout_s``."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "rtsp" or not parts.hostname:
        return None
    host, port = parts.hostname, parts.port or DEFAULT_PORT
    where = f"{host}:{port}"
    plain = urlunsplit((parts.scheme, where, parts.path or "/", parts.query, ""))  # no credentials on the wire
    try:
        status = _describe(host, port, plain, timeout_s)
    except _NoAnswer as problem:
        return str(problem)
    fields = status.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("RTSP/") or not fields[1].isdigit():
        return f"{where} answered, but not in RTSP ({status[:40]!r}): is it an RTSP port?"
    return _meaning(int(fields[1]), fields[2] if len(fields) > 2 else "", parts.path or "/", bool(parts.username))


def _meaning(code: int, reason: str, path: str, credentials: bool) -> str | None:
    """What an RTSP status code says about the URL; None for 200 (the stream is there)."""
    if code == 200:
        return None
    if code == 404:
        return f"the server has no stream {path} (RTSP 404 Not Found): check the path after the port"
    if code == 401 and credentials:
        return "the server asks for a user name and password (RTSP 401) and did not take the ones given: check them"
    if code == 401:
        return "the server asks for a user name and password (RTSP 401): write rtsp://USER:PASSWORD@host/..."
    return f"the server answered RTSP {code} {reason}".rstrip()


class _NoAnswer(Exception):
    """The server gave no RTSP answer; the message says what happened."""


def _describe(host: str, port: int, url: str, timeout_s: float) -> str:
    """The status line of the answer to DESCRIBE url; _NoAnswer when there is none."""
    request = f"DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\nUser-Agent: provq\r\n\r\n"
    connected = False
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            connected = True
            sock.sendall(request.encode())
            return _status_line(sock)
    except OSError as err:
        raise _NoAnswer(_no_answer(err, host, port, timeout_s, connected)) from None


def _no_answer(err: OSError, host: str, port: int, timeout_s: float, connected: bool) -> str:
    """What a socket error while connecting (``connected`` False) or while asking says about the server."""
    where = f"{host}:{port}"
    if connected and isinstance(err, TimeoutError):
        return f"{where} accepts connections but sent no RTSP answer within {timeout_s:g} s: is it an RTSP port?"
    if connected:
        return f"{where} closed the connection ({err.strerror or err}) without an RTSP answer"
    if isinstance(err, ConnectionRefusedError):
        return f"{where} refused the connection: nothing listens there (check the port, and that the camera is on)"
    if isinstance(err, socket.gaierror):
        return f"host {host} is not known: check the address"
    if isinstance(err, TimeoutError):
        return f"{where} did not accept a connection within {timeout_s:g} s: check the address and the network"
    return f"cannot connect to {where} ({err.strerror or err}): check the address and the network"


def _status_line(sock: socket.socket) -> str:
    """The first line of the answer (up to 1 KiB), decoded leniently; '' when the peer closed at once."""
    data = b""
    while b"\n" not in data and len(data) < 1024:
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode("latin-1").strip()
