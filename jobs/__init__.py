"""Scheduled jobs: plain functions of a session and an instant (`jobs.bodies`), run by an
APScheduler BlockingScheduler in its own process (`jobs.scheduler`, `revshare scheduler`), never
inside gunicorn workers. Jobs call the same domain services as the API and the command line."""
