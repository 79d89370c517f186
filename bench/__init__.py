"""Benchmarks that print ratios against the machine's raw limits (DESIGN.md, "Targets").

`python -m bench [--quick] [--engine sqlite|postgres|both] [--only NAME ...]` (or `make bench BENCH_ARGS=--quick`)
prints the machine's facts and one table: metric, engine, measured value, target and verdict, and,
for throughput, the raw baseline measured in the same run with the ratio to it. The machines this
runs on are shared and noisy, so a throughput figure alone says little: the ratio to the bare
driver writing the very same rows a moment later is what to compare across runs.

- `ingestion.py`: bulk `revenue.ingest` in batches of 10,000 against raw executemany / COPY of the
  same rows, and the cost of re-delivering a batch (metric 1);
- `importing.py`: `revshare import` of an NDJSON file as a subprocess, wall time against the
  ingestion's raw limit, and peak RSS, read also when a tenth of the file had been read (2);
- `books.py`: a journal grown through the domain path to about 146,000 lines (quick: five months of
  6,000 paid invoices) or 1M and 10M lines (full): a partner's balance as of now and a hot
  partner's as of a past instant, a month's statement, the trial balance, and closing a month (3, 4);
- `http.py`: single-event POST under gunicorn, against GET /v1/health on the same server (5);
- `jobs.py`: how long single-event postings wait while a job catches up on matured holds, in one
  transaction and `holds.HOLDS_PER_TRANSACTION` to a transaction (not a target of DESIGN.md);
- `profile.py`: `python -m bench.profile`, cProfile of the ingestion path.

Databases live in a temporary directory (SQLite) or a throwaway PostgreSQL cluster
(`tests/pg_cluster.py`), removed at the end. `--quick` finishes in under 3 minutes on 2 cores; the
full run (1M-event import, 10M-line journal, both engines) takes an hour or more.
Results are also written as JSON to `bench/results/` (gitignored) unless `--no-json`.
"""
