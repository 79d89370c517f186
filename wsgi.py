"""The WSGI entry point for gunicorn (`revshare serve`, or `gunicorn wsgi:app`): settings from the
environment, validated at start-up, and a database this code may serve (`ledger.migrate.refusal_to_serve`:
one at the code's latest revision). `revshare serve` checks the database before gunicorn starts;
gunicorn started on its own reads this module in each worker, and served books behind the code (a
close or a payout run written without the rules of the migrations not yet run) until the revision
was checked here. An exception, not an exit: gunicorn stops for a worker that fails to boot, and
starts another in its place for one that exits."""

from api import create_app
from ledger.migrate import refusal_to_serve
from ledger.settings import Settings, without_password

settings = Settings.from_env()
_refusal = refusal_to_serve(settings.database_url)
if _refusal is not None:
    raise RuntimeError(f"cannot serve the database {without_password(settings.database_url)!r}: {_refusal}")
app = create_app(settings)
