"""revshare-ledger domain and persistence.

This package owns the books: money arithmetic, the chart of accounts, the hash-chained journal,
balances and verification. It never imports Flask or APScheduler; the HTTP API (`api/`), the
command line (`cli/`) and the scheduler (`jobs/`) are thin fronts over the functions here. Domain
functions take a SQLAlchemy `Session` and never commit: the caller owns the database transaction.
"""
