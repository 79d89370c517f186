"""The scheduler process: an APScheduler 3 BlockingScheduler in UTC with one entry per job.

Schedules come from the validated settings: release matured holds every
`release_interval_minutes`; the payout run daily, which makes the month's run once
`payout_day_of_month` has come (so it catches up after downtime too, and a run made by hand that
day is the month's); close due periods daily after it (a period is due `close_grace_days` after it
ends, and the job catches up on every overdue period after downtime); verify nightly. Jobs coalesce missed runs, never overlap themselves
(max_instances=1), and a job that raises is logged with its error and runs again at its next time:
the scheduler itself never stops on a job's failure.

The payout job runs before the close job, on the schedule and once more when the scheduler starts
(`start_up`): a run due is then made before a close can seal its month. With the close first, a
scheduler down at the payout job's time (a restart, a deploy) and back by the next close let that
close seal the month of a run not yet made, which then waited for finance; and a scheduler started
after the day's job times did nothing until the next day.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from jobs.bodies import job_table, run_job
from ledger.db import Database
from ledger.settings import Settings

log = logging.getLogger("revshare.scheduler")
MISFIRE_GRACE_SECONDS = 3600
# The release job runs on a grid of its interval from this origin (on the hour, hourly), not counted
# from the scheduler's start: counted so, every restart put the next release a whole interval off,
# and a scheduler restarted more often than that (deploys, a supervisor) never released a hold.
RELEASE_GRID_ORIGIN = datetime(2000, 1, 1, tzinfo=timezone.utc)


def triggers(settings: Settings) -> dict:
    return {
        "release_holds": IntervalTrigger(minutes=settings.release_interval_minutes, start_date=RELEASE_GRID_ORIGIN,
                                         timezone="UTC"),
        "payout_run": CronTrigger(hour=0, minute=30, timezone="UTC"),  # the body knows the day (jobs.bodies)
        "close_periods": CronTrigger(hour=1, timezone="UTC"),  # after the payout run (the module's docstring)
        "verify": CronTrigger(hour=3, minute=0, timezone="UTC"),
    }


def _on_event(event) -> None:
    if event.code == EVENT_JOB_ERROR:
        log.error("job %s failed: %r; it will run again at its next time", event.job_id, event.exception)
    elif event.code == EVENT_JOB_MISSED:
        log.warning("job %s missed its run at %s", event.job_id, event.scheduled_run_time)


def build_scheduler(settings: Settings, database: Database, scheduler: BaseScheduler | None = None,
                    jobs: dict | None = None, schedule: dict | None = None) -> BaseScheduler:
    """Add every job to `scheduler` (a BlockingScheduler unless given). Tests pass their own
    scheduler, jobs and triggers."""
    scheduler = scheduler or BlockingScheduler(timezone="UTC")
    scheduler.add_listener(_on_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED)
    bodies = jobs if jobs is not None else job_table(settings)
    when = schedule if schedule is not None else triggers(settings)
    # Each job's first time is taken now, not when the scheduler starts (APScheduler's default):
    # `run` makes the start-up runs in between, and a time that passed meanwhile would be skipped to
    # the next (verify's 03:00 behind a catch-up from 02:50 to a day later, silently). Taken now,
    # it is run when the scheduler starts, within the misfire grace, or logged as missed.
    now = datetime.now(timezone.utc)
    for name, body in bodies.items():
        scheduler.add_job(run_job, when[name], args=(database, name, body), id=name, name=name,
                          coalesce=True, max_instances=1, misfire_grace_time=MISFIRE_GRACE_SECONDS,
                          replace_existing=True, next_run_time=when[name].get_next_fire_time(None, now))
    return scheduler


START_UP_JOBS = ("payout_run", "close_periods")  # in this order: see the module's docstring


def start_up(database: Database, bodies: dict, at_us: int | None = None) -> None:
    """Run the payout job, then the close job, once, as the scheduler starts. A failure is logged as
    on the schedule, and the scheduler starts all the same."""
    for name in START_UP_JOBS:
        try:
            run_job(database, name, bodies[name], at_us)
        except Exception as error:  # as the scheduler's own listener: logged, and on to the next
            log.error("job %s failed at start: %r; it will run again at its next time", name, error)


def run(settings: Settings) -> None:
    database = Database(settings.database_url)
    scheduler = build_scheduler(settings, database)
    for job in scheduler.get_jobs():
        log.info("scheduled %s: %s", job.id, job.trigger)
    try:
        start_up(database, job_table(settings))
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        log.info("scheduler stopped")
    finally:
        database.dispose()
