"""The WSGI entry point for gunicorn (`revshare serve`, or `gunicorn wsgi:app`): settings from the
environment, validated at start-up, and a database this code may serve (`api.create_served_app`)."""

from api import create_served_app

app = create_served_app()
