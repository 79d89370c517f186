"""`revshare serve`: gunicorn serving `wsgi:app`, configured from the command line.

Gunicorn is driven through its Python API (a small `BaseApplication`), so the command needs no
config file. Each worker imports `wsgi`, which builds the app from the environment's settings.

The workers are gunicorn's sync workers (`Worker`) with four changes, for clients that misbehave or
keep their connections open:
- a client that stops sending its request, or stops reading the answer, for `CLIENT_IDLE_S` is
  dropped (`ClientSocket`). A sync worker serves one connection at a time, and gunicorn's own
  sockets block without a limit: two connections that sent half a request line (or half a body)
  and nothing more held both default workers until the 30-second worker timeout killed them, and
  every other client waited that long, again on each reconnect. The limit is per read or write,
  not per request, and each piece received or sent is the worker's heartbeat: a client that keeps
  sending or reading, however slowly, is served to the end, and one trickling a byte every few
  seconds holds a worker as long, so a service reachable by clients it does not trust belongs
  behind a buffering proxy (README, HTTP API);
- such a drop is one line at INFO (`IdleDropLog`), not gunicorn's traceback at ERROR;
- what gunicorn refuses itself, before the app sees the request (a request line or header over its
  limits, a malformed header, an `Expect` it cannot meet, a worker timeout's 500), is answered as
  `application/problem+json` like every other error of the API, not gunicorn's HTML page;
- a connection whose request was read to its end, with nothing more from the client waiting, is
  closed as soon as its answer is written (`close_answered`). Gunicorn 27 and later linger after
  every answer until the client closes its side, for up to 2 seconds (RFC 9112, section 9.6): that
  keeps a reset from cutting an answer short when request bytes are left unread (a 401 or 413
  answered before its body was read), which still lingers, but with nothing left unread it only holds
  the worker. Two clients that read their answers and kept their connections open a moment longer
  (a connection pool) held both default workers, and a third client's health check waited 1.7 s.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import socket
import struct
import sys
import termios
from http import HTTPStatus

from gunicorn import util
from gunicorn.app.base import BaseApplication
from gunicorn.config import KNOWN_SETTINGS
from gunicorn.http.body import LengthReader
from gunicorn.http.errors import InvalidHeader, InvalidHeaderName, ObsoleteFolding
from gunicorn.workers.sync import SyncWorker

from ledger.errors import header_shown

APP_URI = "wsgi:app"
WORKER_CLASS = "cli.server.Worker"
# Gunicorn 25 and later open a control socket at one path per host user ($XDG_RUNTIME_DIR or
# ~/.gunicorn), which every `revshare serve` on the host would share: each new one takes it over
# and the first to stop removes it, and it makes ~/.gunicorn for a user who may have no home. The
# service does not use it.
_CONTROL_SOCKET = "control_socket_disable" in {setting.name for setting in KNOWN_SETTINGS}
# How long a worker waits on a client that neither sends nor reads, per socket operation.
CLIENT_IDLE_S = 5.0
PROBLEM_TYPE_PREFIX = "urn:revshare:problem:"  # as api.errors, which the arbiter does not import (Flask)
_DETAIL_500 = "An unexpected error occurred. It has been logged."
# Gunicorn's close after an answer: lingering from 27 on; before 27 a plain close, left as it is.
_LINGERS = hasattr(util, "close_graceful")
_LINGERING_CLOSE = util.close_graceful if _LINGERS else util.close


def gunicorn_options(*, host: str, port: int, workers: int, log_level: str) -> dict:
    address = f"[{host}]" if ":" in host else host  # an IPv6 literal needs brackets
    return {
        "bind": f"{address}:{port}",
        "workers": workers,
        "worker_class": WORKER_CLASS,
        "loglevel": log_level.lower(),
        "proc_name": "revshare",
        **({"control_socket_disable": True} if _CONTROL_SOCKET else {}),
    }


def problem_response(status: int, reason: str, detail: str) -> bytes:
    """A whole HTTP response carrying a problem+json body, for what gunicorn answers itself."""
    phrase = HTTPStatus(status).phrase
    title = phrase[:1] + phrase[1:].lower()  # as api.errors titles a status: "Request header fields too large"
    slug = "-".join(title.lower().replace("-", " ").split())
    body = json.dumps({"type": PROBLEM_TYPE_PREFIX + slug, "title": title, "status": status,
                       "detail": detail or _DETAIL_500}).encode()
    # `no-store` as on every answer of the app (api.Response): no cache keeps a refusal either
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/problem+json\r\n"
            f"Cache-Control: no-store\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def _write_problem(sock, status_int: int, reason: str, mesg: str) -> None:
    util.write_nonblock(sock, problem_response(status_int, reason, mesg))


class ClientSocket(socket.socket):
    """A client's socket on which every wait is bounded by its timeout, a send's too: `sendall`
    sends piece by piece, each piece within the timeout. Python's own `sendall` bounds the whole
    answer by it, so a large answer (a hot partner's statement) to a client on a slow link, reading
    steadily, was cut off after `CLIENT_IDLE_S`; only a client that reads nothing is dropped now.

    A piece waits for room in the kernel's send buffer, which Linux grows to megabytes (`tcp_wmem`)
    and reports as writable again only once a third of it is free: a 4.5 MB statement to a client
    reading 160 KB a second, steadily, waited 7 s for its second piece and was cut off. So a wait
    that times out is given another while the client took some of what the kernel holds for it
    (`SIOCOUTQ`: sent and not acknowledged, or not sent yet); a client that took nothing is dropped.
    Each piece received or sent calls `progress` (the worker's heartbeat): a sync worker tells the
    arbiter it lives only between requests, and a body or an answer that took longer than gunicorn's
    worker timeout (30 s) to arrive or to be read, however steadily, had its worker killed midway.
    The worker timeout bounds the app's own work still, from the request's last byte."""

    progress = staticmethod(lambda: None)
    request_read_whole = False  # set once the app answered a request it read to its end (`Worker`)
    received = False  # whether the client sent anything on this connection
    dropped_silent = False  # set when the client sent nothing at all for the idle limit

    def recv(self, size: int, flags: int = 0) -> bytes:
        try:
            data = super().recv(size, flags)
        except TimeoutError:
            self.dropped_silent = not self.received
            raise
        self.received = self.received or bool(data)
        self.progress()
        return data

    def sendall(self, data, flags: int = 0) -> None:
        unsent = memoryview(data).cast("B")
        while unsent:
            held = _queued_bytes(self, termios.TIOCOUTQ)
            try:
                unsent = unsent[self.send(unsent, flags):]
            except TimeoutError:
                still = _queued_bytes(self, termios.TIOCOUTQ)
                if held is None or still is None or still >= held:
                    raise  # the client took nothing for a whole idle limit
            self.progress()


def _queued_bytes(sock: socket.socket, request: int) -> int | None:
    """A count of bytes the kernel keeps for a socket, or None where the kernel does not tell:
    `TIOCOUTQ` (Linux's `SIOCOUTQ` on a socket), held for the peer and not yet acknowledged by it;
    `FIONREAD`, received from the peer and not yet read."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), request, bytes(4)))[0]
    except OSError:
        return None


def close_answered(sock: socket.socket, *args, **kwargs) -> None:
    """Close a client's connection after its answer: at once when its request was read to its end,
    or the client was dropped at the idle limit having sent nothing at all (a browser's preconnect:
    lingering held the worker 2 s past the limit), and nothing it sent is unread; or else as
    gunicorn does, lingering to read what the client still sends (so that the kernel does not
    answer it with a reset that cuts the answer short: a body that paused past the limit and goes
    on is read on, and its client reads the 408)."""
    done = getattr(sock, "request_read_whole", False) or getattr(sock, "dropped_silent", False)
    if done and _queued_bytes(sock, termios.FIONREAD) == 0:
        with contextlib.suppress(OSError):
            sock.close()
        return
    _LINGERING_CLOSE(sock, *args, **kwargs)


def read_to_its_end(req) -> bool:
    """Whether a request's body, of a stated length (none is a length of 0), was all read: then
    the client has nothing more to send for it. A chunked body is not told, and lingers."""
    reader = getattr(getattr(req, "body", None), "reader", None)
    return isinstance(reader, LengthReader) and reader.length == 0


class IdleDropLog:
    """Gunicorn's logger, except that a client dropped at the idle limit is one line at INFO.
    Gunicorn logs a socket error it does not expect with its traceback at ERROR, and the idle
    limit's `TimeoutError` is one to it: each client that opened a connection and sent nothing (a
    browser's preconnect), or stopped reading its answer, wrote 25 lines at ERROR for no error of
    the service's."""

    def __init__(self, log, worker: Worker) -> None:
        self._log = log
        self._worker = worker

    def __getattr__(self, name: str):
        return getattr(self._log, name)

    def exception(self, msg, *args, **kwargs) -> None:
        if isinstance(sys.exc_info()[1], TimeoutError):
            self._log.info("Dropped client ip=%s: it sent nothing, or read nothing of its answer, for %g s",
                           self._worker.client_ip, CLIENT_IDLE_S)
        else:
            self._log.exception(msg, *args, **kwargs)


class Worker(SyncWorker):
    """Gunicorn's sync worker, with an idle limit on each client, problem+json refusals, and no
    lingering after an answer to a request read to its end."""

    client_ip = ""  # of the client being served, for the log

    def init_process(self) -> None:
        # Gunicorn's workers write their refusals with `util.write_error` (an HTML page): in this
        # worker process, which serves nothing but this API, they write the API's problem+json.
        util.write_error = _write_problem
        if _LINGERS:
            util.close_graceful = close_answered
        self.log = IdleDropLog(self.log, self)
        super().init_process()

    def accept(self, listener) -> None:
        accepted, addr = listener.accept()
        self.client_ip = addr[0] if isinstance(addr, tuple) else str(addr)
        client = ClientSocket(accepted.family, accepted.type, accepted.proto, fileno=accepted.detach())
        client.settimeout(CLIENT_IDLE_S)
        client.progress = self.notify
        util.close_on_exec(client)
        self.handle(listener, client, addr)

    def handle_request(self, listener, req, client, addr) -> None:
        super().handle_request(listener, req, client, addr)
        client.request_read_whole = read_to_its_end(req)

    def handle_error(self, req, client, addr, exc) -> None:
        # A line without a colon was named whole in gunicorn's log line and its 400's detail: a
        # client's key sent as a line of its own (`\r\n<key>\r\n`) was written to the log.
        if isinstance(exc, (InvalidHeader, InvalidHeaderName, ObsoleteFolding)):
            exc.hdr = header_shown(exc.hdr)
        super().handle_error(req, client, addr, exc)


class Server(BaseApplication):
    def __init__(self, options: dict, app_uri: str = APP_URI) -> None:
        self.options = options
        self.app_uri = app_uri
        super().__init__()

    def load_config(self) -> None:
        for name, value in self.options.items():
            self.cfg.set(name, value)

    def load(self):
        return util.import_app(self.app_uri)


def unbindable(host: str, port: int) -> str | None:
    """Why gunicorn could not listen on the address (in use, not this machine's, a name that does
    not resolve), or None: it would retry for five seconds and exit 1, which this command's exit
    codes give to problems found, not to a setting that cannot work (2). Bound as gunicorn binds it:
    an IPv6 literal over IPv6, anything else (a name too) over IPv4, with SO_REUSEADDR. An empty host
    would listen on every interface (`--host "$HOST"` with the variable unset): refused, where every
    interface is meant it is said as 0.0.0.0."""
    if host == "":
        return "an empty host listens on every interface: give 0.0.0.0 (or ::) to mean that"
    if host.startswith("[") and host.endswith("]"):  # resolved as a name, not found
        return f"give an IPv6 address without brackets: --host {host[1:-1]}"
    family = socket.AF_INET6 if util.is_ipv6(host) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
    except OSError as error:
        reason = error.strerror or str(error)
        if error.errno == errno.EADDRINUSE:
            return f"{reason}: stop what listens there, or give another --port"
        if error.errno == errno.EACCES:
            return f"{reason}: a port below 1024 takes privileges; give another --port"
        if error.errno == errno.EADDRNOTAVAIL or isinstance(error, socket.gaierror):
            return f"{reason}: give an address of this machine's as --host (127.0.0.1, 0.0.0.0 for all of them)"
        return f"{reason}: give another --host or --port"
    except TypeError as error:  # a name IDNA cannot encode (`a..b` passes, to fail resolving: OSError)
        return f"not a host name: {error}"
    return None


def run(options: dict) -> None:
    Server(options).run()
