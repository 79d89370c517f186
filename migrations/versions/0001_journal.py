"""Journal core: accounts, transactions and lines, with the database's own guards.

Guards kept by the database even when Python is bypassed:
- CHECK amount_minor > 0, side in (D, C), id >= 1, known kinds; UNIQUE idempotency key and
  reverses_id (a transaction is reversed at most once); the primary key is the sequence number.
- Seal: a transaction's lines are inserted before its header. Inserting the header checks that the
  transaction has two or more lines, that debits equal credits per currency, that every line carries
  the header's instant, and that the header continues the hash chain without a gap (transaction n
  names transaction n-1's hash). Lines cannot be added to a sealed transaction, and the deferred
  foreign key refuses at commit a line whose header never came.
  PostgreSQL: statement-level triggers over transition tables (one check per statement, not per
  row). SQLite: row triggers.
- Append-only: UPDATE and DELETE are refused on every journal table (SQLite triggers, which with
  `PRAGMA recursive_triggers=ON` also refuse `INSERT OR REPLACE`; PostgreSQL row triggers, plus a
  TRUNCATE trigger).

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

GENESIS = "0" * 64
KINDS = ("accrual", "cpa", "override", "clawback", "release", "payout", "payout_settled",
         "payout_failed", "writeoff", "adjustment", "reversal")
JOURNAL_TABLES = ("accounts", "journal_transactions", "journal_lines")
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _in(values) -> str:
    return ", ".join(f"'{value}'" for value in values)


def upgrade() -> None:
    _create_tables()
    if op.get_bind().dialect.name == "postgresql":
        _postgres_guards()
    else:
        _sqlite_guards()


def _create_tables() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("normal_side", sa.String(1), nullable=False),
        sa.Column("partner_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("name", name=op.f("uq_accounts_name")),
        sa.CheckConstraint("type IN ('asset', 'liability', 'expense', 'revenue', 'equity')", name=op.f("ck_accounts_type")),
        sa.CheckConstraint("normal_side IN ('D', 'C')", name=op.f("ck_accounts_normal_side")),
    )
    op.create_table(
        "journal_transactions",
        sa.Column("id", Id, autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("effective_at_us", sa.BigInteger, nullable=False),
        sa.Column("original_effective_at_us", sa.BigInteger, nullable=True),
        sa.Column("recorded_at_us", sa.BigInteger, nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("partner_id", sa.String(64), nullable=True),
        sa.Column("customer_id", sa.String(64), nullable=True),
        sa.Column("invoice_id", sa.String(64), nullable=True),
        sa.Column("event_id", sa.String(64), nullable=True),
        sa.Column("plan_version_id", sa.BigInteger, nullable=True),
        sa.Column("accrual_id", Id, nullable=True),
        sa.Column("reverses_id", Id, nullable=True),
        sa.Column("matures_at_us", sa.BigInteger, nullable=True),
        sa.Column("memo", sa.Text, nullable=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journal_transactions")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_journal_transactions_idempotency_key")),
        sa.UniqueConstraint("reverses_id", name=op.f("uq_journal_transactions_reverses_id")),
        sa.ForeignKeyConstraint(["accrual_id"], ["journal_transactions.id"],
                                name=op.f("fk_journal_transactions_accrual_id_journal_transactions")),
        sa.ForeignKeyConstraint(["reverses_id"], ["journal_transactions.id"],
                                name=op.f("fk_journal_transactions_reverses_id_journal_transactions")),
        sa.CheckConstraint("id >= 1", name=op.f("ck_journal_transactions_id_positive")),
        sa.CheckConstraint(f"kind IN ({_in(KINDS)})", name=op.f("ck_journal_transactions_kind")),
        sa.CheckConstraint("reverses_id IS NULL OR kind = 'reversal'",
                           name=op.f("ck_journal_transactions_reverses_only_reversal")),
        sa.CheckConstraint("length(hash) = 64 AND length(prev_hash) = 64", name=op.f("ck_journal_transactions_hash_length")),
    )
    op.create_index(op.f("ix_journal_transactions_partner_id_id"), "journal_transactions", ["partner_id", "id"])
    op.create_index(op.f("ix_journal_transactions_invoice_id"), "journal_transactions", ["invoice_id"])
    op.create_index(op.f("ix_journal_transactions_accrual_id"), "journal_transactions", ["accrual_id"])
    op.create_index(op.f("ix_journal_transactions_matures_at_us"), "journal_transactions", ["matures_at_us"])
    op.create_table(
        "journal_lines",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("transaction_id", Id, nullable=False),
        sa.Column("account_id", Id, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("side", sa.String(1), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("effective_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journal_lines")),
        sa.ForeignKeyConstraint(["transaction_id"], ["journal_transactions.id"], deferrable=True, initially="DEFERRED",
                                name=op.f("fk_journal_lines_transaction_id_journal_transactions")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_journal_lines_account_id_accounts")),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_journal_lines_amount_positive")),
        sa.CheckConstraint("side IN ('D', 'C')", name=op.f("ck_journal_lines_side")),
        sa.CheckConstraint("length(currency) = 3", name=op.f("ck_journal_lines_currency_code")),
    )
    op.create_index(op.f("ix_journal_lines_transaction_id"), "journal_lines", ["transaction_id"])
    op.create_index("ix_journal_lines_balance", "journal_lines",
                    ["account_id", "currency", "effective_at_us", "side", "amount_minor"])


SQLITE_SEAL = f"""
CREATE TRIGGER trg_journal_lines_sealed BEFORE INSERT ON journal_lines
WHEN EXISTS (SELECT 1 FROM journal_transactions WHERE id = NEW.transaction_id)
BEGIN SELECT RAISE(ABORT, 'journal_lines: transaction is sealed, lines cannot be added'); END;

CREATE TRIGGER trg_journal_transactions_seal AFTER INSERT ON journal_transactions
BEGIN
  SELECT RAISE(ABORT, 'journal_transactions: a transaction needs two or more lines')
  WHERE (SELECT count(*) FROM journal_lines WHERE transaction_id = NEW.id) < 2;
  SELECT RAISE(ABORT, 'journal_transactions: debits do not equal credits per currency')
  WHERE EXISTS (SELECT 1 FROM journal_lines WHERE transaction_id = NEW.id GROUP BY currency
                HAVING sum(CASE side WHEN 'D' THEN amount_minor ELSE -amount_minor END) <> 0);
  SELECT RAISE(ABORT, 'journal_transactions: every line carries its transaction''s effective instant')
  WHERE EXISTS (SELECT 1 FROM journal_lines WHERE transaction_id = NEW.id AND effective_at_us <> NEW.effective_at_us);
  SELECT RAISE(ABORT, 'journal_transactions: the sequence continues the hash chain without a gap')
  WHERE (NEW.id = 1 AND NEW.prev_hash <> '{GENESIS}')
     OR (NEW.id > 1 AND NOT EXISTS (SELECT 1 FROM journal_transactions WHERE id = NEW.id - 1 AND hash = NEW.prev_hash));
END;
"""


def _sqlite_guards() -> None:
    for statement in SQLITE_SEAL.split(";\n\n"):
        op.execute(statement)
    for table in JOURNAL_TABLES:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER trg_{table}_no_{operation.lower()} BEFORE {operation} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {operation} refused'); END"
            )


POSTGRES_GUARDS = f"""
CREATE FUNCTION journal_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP USING ERRCODE = 'restrict_violation';
END $$;

CREATE FUNCTION journal_lines_refuse_sealed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM added a JOIN journal_transactions t ON t.id = a.transaction_id) THEN
    RAISE EXCEPTION 'journal_lines: transaction is sealed, lines cannot be added' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$;

CREATE FUNCTION journal_transactions_seal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM sealed s LEFT JOIN journal_lines l ON l.transaction_id = s.id
             GROUP BY s.id HAVING count(l.id) < 2) THEN
    RAISE EXCEPTION 'journal_transactions: a transaction needs two or more lines' USING ERRCODE = 'check_violation';
  END IF;
  IF EXISTS (SELECT 1 FROM sealed s JOIN journal_lines l ON l.transaction_id = s.id GROUP BY s.id, l.currency
             HAVING sum(CASE l.side WHEN 'D' THEN l.amount_minor ELSE -l.amount_minor END) <> 0) THEN
    RAISE EXCEPTION 'journal_transactions: debits do not equal credits per currency' USING ERRCODE = 'check_violation';
  END IF;
  IF EXISTS (SELECT 1 FROM sealed s JOIN journal_lines l ON l.transaction_id = s.id
             WHERE l.effective_at_us <> s.effective_at_us) THEN
    RAISE EXCEPTION 'journal_transactions: every line carries its transaction''s effective instant'
      USING ERRCODE = 'check_violation';
  END IF;
  IF EXISTS (SELECT 1 FROM sealed s LEFT JOIN journal_transactions p ON p.id = s.id - 1
             WHERE (s.id = 1 AND s.prev_hash <> '{GENESIS}')
                OR (s.id > 1 AND (p.id IS NULL OR p.hash <> s.prev_hash))) THEN
    RAISE EXCEPTION 'journal_transactions: the sequence continues the hash chain without a gap'
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER trg_journal_lines_sealed AFTER INSERT ON journal_lines
REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION journal_lines_refuse_sealed();

CREATE TRIGGER trg_journal_transactions_seal AFTER INSERT ON journal_transactions
REFERENCING NEW TABLE AS sealed FOR EACH STATEMENT EXECUTE FUNCTION journal_transactions_seal()
"""


def _postgres_guards() -> None:
    for statement in POSTGRES_GUARDS.split(";\n\n"):
        op.execute(statement)
    for table in JOURNAL_TABLES:
        op.execute(f"CREATE TRIGGER trg_{table}_no_change BEFORE UPDATE OR DELETE ON {table} "
                   f"FOR EACH ROW EXECUTE FUNCTION journal_refuse_change()")
        op.execute(f"CREATE TRIGGER trg_{table}_no_truncate BEFORE TRUNCATE ON {table} "
                   f"FOR EACH STATEMENT EXECUTE FUNCTION journal_refuse_change()")


def downgrade() -> None:
    raise NotImplementedError("the journal is never dropped by a migration")
