"""The `revshare` command line: a thin front over ledger/ (and api/ for `serve`, jobs/ for `scheduler`)."""
