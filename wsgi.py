"""The WSGI entry point for gunicorn (`revshare serve`, or `gunicorn wsgi:app`): settings from the
environment, validated at start-up."""

from api import create_app

app = create_app()
