"""A migration that has landed on `main` is never edited: a database it migrated keeps what it
made, and `revshare db upgrade` says such a database is at the latest revision, so an edit reaches
new databases only. A change to the schema, a rule or a guard is a new revision (which may remake
what an earlier one made, as 0048 remakes 0047's commission rule). `migrations/landed.sha256` holds
each revision's SHA-256 as it landed (`sha256sum` of `migrations/versions/0*.py`); a new revision
is added to it, in the same commit."""

import hashlib
from pathlib import Path

VERSIONS = Path(__file__).resolve().parents[2] / "migrations" / "versions"
LANDED = VERSIONS.parent / "landed.sha256"


def landed() -> dict[str, str]:
    digests = {}
    for line in LANDED.read_text().splitlines():
        digest, name = line.split()
        digests[name] = digest
    return digests


def test_every_revision_is_recorded_as_it_landed():
    files = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in VERSIONS.glob("0*.py")}
    recorded = landed()
    assert sorted(files) == sorted(recorded), "migrations/landed.sha256 lists every revision, and only those"
    edited = sorted(name for name, digest in files.items() if recorded[name] != digest)
    assert not edited, f"landed revisions edited: {edited}; make the change in a new revision"
