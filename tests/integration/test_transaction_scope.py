"""What a unit of work asks to run at its commit (`db.after_commit`) and keeps for itself
(`db.transaction_info`) lasts as long as the transaction: through a savepoint's begin, release and
rollback, never into the next transaction, and never past a rollback of its own."""

import sqlalchemy as sa

from ledger.db import after_commit, transaction_info


class Crash(Exception):
    pass


def test_a_savepoint_leaves_what_its_transaction_asked_for_and_kept(database):
    ran = []
    with database.transaction() as session:
        session.execute(sa.text("SELECT 1"))
        transaction_info(session)["kept"] = 1
        after_commit(session, lambda: ran.append("committed"))
        with session.begin_nested():  # released
            session.execute(sa.text("SELECT 2"))
        try:
            with session.begin_nested():  # rolled back
                raise Crash
        except Crash:
            pass
        assert transaction_info(session) == {"kept": 1}
    assert ran == ["committed"]
    with database.transaction() as session:
        session.execute(sa.text("SELECT 1"))
        assert transaction_info(session) == {}


def test_a_transaction_rolled_back_runs_nothing_and_leaves_nothing_to_the_next(database):
    # A savepoint's release is no commit of the transaction (SQLAlchemy's after_commit comes for it):
    # the ids of accounts a batch rolled back had made were cached at it, and the next batch's
    # lines named accounts that did not exist.
    ran = []
    try:
        with database.transaction() as session:
            session.execute(sa.text("SELECT 1"))
            transaction_info(session)["kept"] = 1
            after_commit(session, lambda: ran.append("committed"))
            with session.begin_nested():
                session.execute(sa.text("SELECT 2"))
            assert ran == []
            raise Crash
    except Crash:
        pass
    with database.transaction() as session:
        session.execute(sa.text("SELECT 1"))
        assert transaction_info(session) == {}
    assert ran == []
