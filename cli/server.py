"""`revshare serve`: gunicorn serving `wsgi:app`, configured from the command line.

Gunicorn is driven through its Python API (a small `BaseApplication`), so the command needs no
config file. Each worker imports `wsgi`, which builds the app from the environment's settings.
"""

from __future__ import annotations

from gunicorn import util
from gunicorn.app.base import BaseApplication
from gunicorn.config import KNOWN_SETTINGS

APP_URI = "wsgi:app"
# Gunicorn 25 and later open a control socket at one path per host user ($XDG_RUNTIME_DIR or
# ~/.gunicorn), which every `revshare serve` on the host would share: each new one takes it over
# and the first to stop removes it, and it makes ~/.gunicorn for a user who may have no home. The
# service does not use it.
_CONTROL_SOCKET = "control_socket_disable" in {setting.name for setting in KNOWN_SETTINGS}


def gunicorn_options(*, host: str, port: int, workers: int, log_level: str) -> dict:
    address = f"[{host}]" if ":" in host else host  # an IPv6 literal needs brackets
    return {
        "bind": f"{address}:{port}",
        "workers": workers,
        "worker_class": "sync",
        "loglevel": log_level.lower(),
        "proc_name": "revshare",
        **({"control_socket_disable": True} if _CONTROL_SOCKET else {}),
    }


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


def run(options: dict) -> None:
    Server(options).run()
