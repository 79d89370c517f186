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
after the day's job times did nothing until the next day. Either of the two failing because the
database was unavailable (at start, or at its time) has both run again, in that order, every
`RETRY_MINUTES` until they succeed (`CatchUp`): a database restarted at 00:30 on payout day
otherwise put the month's payout run, and the closes, off to the next day.

The log says each job's outcome in one line: its figures, or its failure. A failure to reach the
database is one line with the database's own words, not a traceback (APScheduler's is dropped);
any other failure keeps its traceback. APScheduler's own INFO lines (a job added, running, done)
show at DEBUG only.

A PostgreSQL server that does not take connections when the scheduler starts is waited for
(`wait_for_database`), with a line in the log per try, until it does or a signal stops the wait.
"""

from __future__ import annotations

import logging
import re
import signal
import time
from datetime import datetime, timezone

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.pool import NullPool

from jobs.bodies import job_table, run_job
from ledger.db import Database, database_words, make_engine, normalize_url
from ledger.errors import BooksCannotTake, printable
from ledger.settings import Settings, without_password

log = logging.getLogger("revshare.scheduler")
MISFIRE_GRACE_SECONDS = 3600
RETRY_MINUTES = 5  # the payout and close jobs, after the database was unavailable (`CatchUp`)
RETRY_JOB = "retry_payout_and_close"
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


def database_unavailable(error: BaseException) -> bool:
    """Whether `error` is the database's being unreachable, down, restarting or busy, which a later
    run cures, rather than a fault of the job."""
    return isinstance(error, (OperationalError, InterfaceError))


def log_failure(name: str, error: BaseException, *, when: str = "", then: str = "at its next time") -> None:
    if database_unavailable(error):
        log.error("job %s failed%s: the database is unavailable: %s; it will run again %s", name, when,
                  database_words(error), then)
    elif isinstance(error, BooksCannotTake):  # the books refuse the job's postings: in their words, no traceback
        log.error("job %s failed%s: %s; it will run again %s", name, when, printable(error.detail), then)
    else:
        log.error("job %s failed%s: %r; it will run again %s", name, when, error, then, exc_info=error)


class _DropRepeats(logging.Filter):
    """APScheduler logs a job's failure (with its traceback) and a missed run at ERROR and WARNING;
    the listener logs each once (`log_failure`, "missed its run")."""

    REPEATED = ('Job "%s" raised an exception', 'Run time of job "%s" was missed by %s')

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.REPEATED


_DROP_REPEATS = _DropRepeats()


def _listener(catch_up: CatchUp | None):
    def on_event(event) -> None:
        if event.code == EVENT_JOB_ERROR:
            owed = catch_up is not None and event.job_id in START_UP_JOBS and database_unavailable(event.exception)
            log_failure(event.job_id, event.exception, then=RETRY_THEN if owed else "at its next time")
            if owed:
                catch_up.owed = True
        elif event.code == EVENT_JOB_MISSED:
            log.warning("job %s missed its run at %s", event.job_id, event.scheduled_run_time)
    return on_event


def build_scheduler(settings: Settings, database: Database, scheduler: BaseScheduler | None = None,
                    jobs: dict | None = None, schedule: dict | None = None,
                    catch_up: CatchUp | None = None) -> BaseScheduler:
    """Add every job to `scheduler` (a BlockingScheduler unless given), and `catch_up`'s retries
    when given. Tests pass their own scheduler, jobs and triggers."""
    scheduler = scheduler or BlockingScheduler(timezone="UTC")
    logging.getLogger("apscheduler.executors.default").addFilter(_DROP_REPEATS)
    scheduler.add_listener(_listener(catch_up), EVENT_JOB_ERROR | EVENT_JOB_MISSED)
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
RETRY_THEN = f"within {RETRY_MINUTES} minutes, the payout job then the close job"


class CatchUp:
    """The payout job, then the close job: once as the scheduler starts, then again each time
    `retry` is called (every `RETRY_MINUTES`) while `owed`, which a failure of either on an
    unavailable database sets, at start or at its time (`_listener`). A failure is logged as on
    the schedule; the scheduler starts and keeps running all the same."""

    def __init__(self, database: Database, bodies: dict) -> None:
        self.database, self.bodies = database, bodies
        self.owed = False

    def run(self, at_us: int | None = None, *, when: str = " at start") -> None:
        self.owed = False
        for name in START_UP_JOBS:
            try:
                run_job(self.database, name, self.bodies[name], at_us)
            except Exception as error:  # as the scheduler's own listener: logged, and on to the next
                if database_unavailable(error):
                    log_failure(name, error, when=when, then=RETRY_THEN)
                    self.owed = True
                    return  # the close waits for the payout run, as on the schedule
                log_failure(name, error, when=when)

    def retry(self) -> None:
        if self.owed:
            self.run(when=" again")

    def schedule_retries(self, scheduler: BaseScheduler) -> None:
        scheduler.add_job(self.retry, IntervalTrigger(minutes=RETRY_MINUTES, timezone="UTC"), id=RETRY_JOB,
                          name=RETRY_JOB, coalesce=True, max_instances=1, misfire_grace_time=MISFIRE_GRACE_SECONDS,
                          replace_existing=True)


def start_up(database: Database, bodies: dict, at_us: int | None = None) -> None:
    """Run the payout job, then the close job, once, as the scheduler starts (`CatchUp.run`)."""
    CatchUp(database, bodies).run(at_us)


WAIT_FIRST_S = 1.0  # the first wait for a database out of reach at start, doubled each time ...
WAIT_MAX_S = 60.0  # ... up to this
# Each try's bound: a server that takes the TCP connection and never answers (stopped, or behind a
# firewall that drops packets) otherwise held a try for psycopg's default of 130 s, silent.
WAIT_CONNECT_TIMEOUT_S = 10
# What time cures, by SQLSTATE where psycopg gives one: an error on a connection already made (the
# check's query, SQLAlchemy's first queries), whose words a server's `lc_messages` translates. A
# connection lost (08000, 08003, 08006), 57P01 admin_shutdown (a fast shutdown ending the sessions it
# finds: a restart), 57P02 crash_shutdown, 57P03 cannot_connect_now and 53300 too_many_connections;
# not 08P01, a protocol violation, which another service on the port gives for ever.
_WAITED_SQLSTATES = frozenset({"08000", "08003", "08006", "57P01", "57P02", "57P03", "53300"})
# A refused connection has no SQLSTATE, only libpq's words and the server's, in English. No server
# reached: none listening (libpq's hint "Is the server running", after a refused TCP connection or a
# missing socket file), no answer within the bound, no route, a name not resolved yet, a connection
# cut as the server went down. A server that does not take connections for now: 57P03
# cannot_connect_now (starting up, shutting down, in recovery, a standby not, or not yet, accepting
# connections) and 53300 too_many_connections. Anything else is a setting to fix, whether
# the server says it (a database or role that does not exist, a password or pg_hba refusal) or libpq
# (SSL required and not offered, an option's bad value, an authentication the URL requires): it
# exits 2 at once. A word not listed here exits too, which a supervisor's restart cures; a setting
# waited on was logged every minute for ever.
_OUT_OF_REACH = re.compile(
    r"Is the server running|timeout expired|Connection timed out|No route to host|Network is unreachable"
    r"|Host is unreachable|could not translate host name|failed to resolve host"
    r"|server closed the connection unexpectedly|Connection reset by peer"
    r"|the database system is (starting up|shutting down|in recovery mode|not yet accepting connections"
    r"|not accepting connections)"
    r"|too many clients|remaining connection slots|too many connections for (role|database)")


def out_of_reach(error: BaseException) -> bool:
    """Whether a connection failed for want of a server taking connections (none listening, a name
    not resolved yet, a server starting, restarting or a standby, its connections full), not for a
    setting."""
    if not isinstance(error, OperationalError):
        return False
    sqlstate = getattr(error.orig, "sqlstate", None)
    if sqlstate:
        return sqlstate in _WAITED_SQLSTATES
    return bool(_OUT_OF_REACH.search(str(error.orig or error)))


def wait_for_database(url: str) -> bool:
    """Wait until the PostgreSQL server at `url` takes connections, trying again after 1, 2, 4, ...
    seconds (at most `WAIT_MAX_S`), with a line in the log each time; whether to go on (False: a
    SIGTERM or SIGINT came meanwhile). A long-running process started with its database (a host's
    boot, a compose file, a database restarted by a deploy) otherwise exited 2, and stayed down
    unless a supervisor restarted it. Anything else the database or libpq says (a name, a role, a
    password, SSL required and not offered, a schema not migrated: `out_of_reach`) is left to the
    checks that follow, which exit 2 at once; so is SQLite, a local file that waiting does not bring.

    Nothing is in progress while it waits, so the first signal stops it at once, inside a try too:
    kept until the try ended, it outlived a stop's grace period (Docker's 10 s)."""
    if not normalize_url(url).startswith("postgresql"):
        return True
    timeout = {} if "connect_timeout" in make_url(url).query else {"connect_timeout": WAIT_CONNECT_TIMEOUT_S}
    engine = make_engine(url, poolclass=NullPool, connect_args=timeout)
    stop = _Stop()
    stop.raise_now = True
    previous = {number: signal.signal(number, stop) for number in (signal.SIGTERM, signal.SIGINT)}
    wait_s = WAIT_FIRST_S
    try:
        while True:
            try:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
                return True
            except DBAPIError as error:
                # Not only OperationalError: psycopg refuses an option's bad value (connect_timeout=abc)
                # with a ProgrammingError, before it connects; escaping the wait, it was a traceback
                # and exit 1, where `verify` on the same URL said it and exited 2.
                if not out_of_reach(error):
                    return True
                log.warning("the database %r is unreachable: %s; trying again in %g s", without_password(url),
                            database_words(error), wait_s)
            time.sleep(wait_s)
            wait_s = min(wait_s * 2, WAIT_MAX_S)
    except SystemExit:
        log.info("scheduler stopped")
        return False
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        engine.dispose()


class _Stop:
    """The handler of SIGTERM and SIGINT. SIGTERM is how systemd, Docker and Kubernetes stop a
    process: Python's default for it ended the scheduler at once, with no line in the log, and as a
    container's process 1 Python ignores it, so a stop waited out its grace period for a SIGKILL.

    While the scheduler runs, its main thread only waits for the next job time (the jobs run in a
    pool), and the signal raises SystemExit there: the scheduler stops, a job that is running runs
    to its end (each of its transactions is complete on its own), and the log says so. During the
    start-up jobs the main thread is inside a database driver, which an exception raised at an
    arbitrary point leaves mid-statement (the rollback then fails, and that error hid the stop):
    the first signal is kept until they end, a second one stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self.raise_now = False

    def __call__(self, signal_number: int, frame) -> None:
        if self.raise_now or self.requested:
            raise SystemExit(0)
        self.requested = True


def run(settings: Settings) -> None:
    stop = _Stop()
    previous = {number: signal.signal(number, stop) for number in (signal.SIGTERM, signal.SIGINT)}
    database = Database(settings.database_url)
    # APScheduler's INFO lines (a job added, running, done) repeat what the jobs' own lines say: shown
    # at DEBUG, where they tell what the scheduler did when, and from WARNING up otherwise.
    level = logging.getLevelName(settings.log_level)
    logging.getLogger("apscheduler").setLevel(level if level <= logging.DEBUG else max(logging.WARNING, level))
    catch_up = CatchUp(database, job_table(settings))
    scheduler = build_scheduler(settings, database, catch_up=catch_up)
    catch_up.schedule_retries(scheduler)
    for job in scheduler.get_jobs():
        log.info("scheduled %s: %s", job.id, job.trigger)
    try:
        log.info("running the payout job, then the close job, as the scheduler starts")
        catch_up.run()
        stop.raise_now = True  # before the check: a signal after it raises, one before it is seen
        if stop.requested:
            raise SystemExit(0)
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        if scheduler.running:
            log.info("scheduler stopping: waiting for any job that is running to end")
            scheduler.shutdown(wait=True)
        log.info("scheduler stopped")
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        database.dispose()
