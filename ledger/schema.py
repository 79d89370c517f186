"""The tables, as SQLAlchemy Core metadata. Alembic migrations are the only way the schema changes;
`tests/integration/test_migrations.py` proves the migrated database matches this metadata.

Journal design (see also migrations/versions/0001_journal.py for the database-side guards):

- `journal_transactions.id` is the sequence number: gap-free, assigned under the journal lock, and
  the link of the SHA-256 chain (`prev_hash` is the hash of transaction `id - 1`).
- A transaction's lines are inserted *before* its header row; inserting the header seals it. The
  database checks at the seal that the transaction has at least two lines and that debits equal
  credits per currency, and refuses any line added to a sealed transaction. The foreign key from
  lines to their header is deferred to commit, so a line without a header never commits.
- `journal_lines.effective_at_us` repeats its header's instant so that balances are answered from
  covering indexes without touching the headers: (account, instant, currency, side, amount) for one
  account after an instant, (instant, account, currency, side, amount) for every account in a range.
- Journal tables refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL) in the database.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    JSON,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# Integer primary keys: BIGINT on PostgreSQL, the rowid alias INTEGER on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")

TRANSACTION_KINDS = (
    "accrual", "cpa", "override", "clawback", "release", "payout", "payout_settled",
    "payout_failed", "writeoff", "adjustment", "reversal",
)
ACCOUNT_TYPES = ("asset", "liability", "expense", "revenue", "equity")
GENESIS_HASH = "0" * 64

accounts = Table(
    "accounts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("type", String(16), nullable=False),
    Column("normal_side", String(1), nullable=False),
    Column("partner_id", String(64), nullable=True),
    CheckConstraint(f"type IN ({', '.join(repr(t) for t in ACCOUNT_TYPES)})", name="type"),
    CheckConstraint("normal_side IN ('D', 'C')", name="normal_side"),
)

journal_transactions = Table(
    "journal_transactions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=False),
    Column("kind", String(16), nullable=False),
    Column("effective_at_us", BigInteger, nullable=False),
    Column("original_effective_at_us", BigInteger, nullable=True),
    Column("recorded_at_us", BigInteger, nullable=False),
    Column("idempotency_key", String(200), nullable=False, unique=True),
    Column("request_hash", String(64), nullable=False),
    Column("partner_id", String(64), nullable=True),
    Column("customer_id", String(64), nullable=True),
    Column("invoice_id", String(64), nullable=True),
    Column("event_id", String(64), nullable=True),
    Column("plan_version_id", BigInteger, nullable=True),
    Column("accrual_id", Id, ForeignKey("journal_transactions.id"), nullable=True),
    Column("reverses_id", Id, ForeignKey("journal_transactions.id"), nullable=True, unique=True),
    Column("matures_at_us", BigInteger, nullable=True),
    Column("memo", Text, nullable=True),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    # In the chain hash, never shown over the API (ledger/journal.py); NULL before migration 0028.
    Column("salt", String(32), nullable=True),
    CheckConstraint("id >= 1", name="id_positive"),
    CheckConstraint(f"kind IN ({', '.join(repr(k) for k in TRANSACTION_KINDS)})", name="kind"),
    CheckConstraint("reverses_id IS NULL OR kind = 'reversal'", name="reverses_only_reversal"),
    CheckConstraint("length(hash) = 64 AND length(prev_hash) = 64", name="hash_length"),
    Index(None, "partner_id", "id"),
    Index(None, "invoice_id"),
    Index(None, "event_id"),
    Index(None, "effective_at_us"),
)

journal_lines = Table(
    "journal_lines",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column(
        "transaction_id",
        Id,
        ForeignKey("journal_transactions.id", deferrable=True, initially="DEFERRED"),
        nullable=False,
    ),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("side", String(1), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("effective_at_us", BigInteger, nullable=False),
    CheckConstraint("amount_minor > 0", name="amount_positive"),
    CheckConstraint("side IN ('D', 'C')", name="side"),
    CheckConstraint("length(currency) = 3", name="currency_code"),
    Index(None, "transaction_id"),
    # One account's lines after an instant (balances, statements), and every account's lines in a
    # time range (trial balance, period close): both covering, so neither touches the table.
    Index("ix_journal_lines_balance", "account_id", "effective_at_us", "currency", "side", "amount_minor"),
    Index("ix_journal_lines_period", "effective_at_us", "account_id", "currency", "side", "amount_minor"),
)

JOURNAL_TABLES = ("accounts", "journal_transactions", "journal_lines")

# Every (account, currency)'s debits, credits, last line counted and latest line instant, kept by
# the database as lines are inserted (migrations/versions/0008_account_totals.py): a balance as of
# an instant after every line of its accounts (as of now) reads one row per account. Python never
# writes it.
account_totals = Table(
    "account_totals",
    metadata,
    Column("account_id", Id, ForeignKey("accounts.id"), primary_key=True, autoincrement=False),
    Column("currency", String(3), primary_key=True),
    Column("debit_minor", BigInteger, nullable=False),
    Column("credit_minor", BigInteger, nullable=False),
    Column("last_line_id", BigInteger, nullable=False),
    Column("latest_effective_at_us", BigInteger, nullable=False),  # the latest instant among the lines
    CheckConstraint("debit_minor >= 0 AND credit_minor >= 0", name="non_negative"),
    sqlite_with_rowid=False,
    postgresql_with={"fillfactor": 50},
)

# ---- access and HTTP idempotency (not journal data: rows are never updated, but may be pruned) ----

API_ROLES = ("admin", "finance", "billing", "partner")

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("partner_id", String(64), nullable=True),
    Column("created_at_us", BigInteger, nullable=False),
    # From this instant on the key no longer authenticates; none: it does not expire (migration 0057).
    Column("expires_at_us", BigInteger, nullable=True),
    CheckConstraint(f"role IN ({', '.join(repr(r) for r in API_ROLES)})", name="role"),
    CheckConstraint("(role = 'partner') = (partner_id IS NOT NULL)", name="partner_binding"),
    CheckConstraint("expires_at_us IS NULL OR expires_at_us > created_at_us", name="expires_after_creation"),
)

# A revoked key (migration 0027): one row per key, never updated; the key no longer authenticates.
api_key_revocations = Table(
    "api_key_revocations",
    metadata,
    Column("api_key_id", String(32), ForeignKey("api_keys.id"), primary_key=True),
    Column("revoked_at_us", BigInteger, nullable=False),
    Column("reason", String(500), nullable=True),
)

idempotency_records = Table(
    "idempotency_records",
    metadata,
    Column("api_key_id", String(32), ForeignKey("api_keys.id"), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("method", String(8), nullable=False),
    Column("path", String(500), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("request_body", Text, nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("response_body", Text, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
)


# ---- the partner program: partners, plans, customers, attribution, revenue events ----
# Every table below is append-only except `open_holds`, a work queue derived from the journal.
# Changing facts (a partner's status or plan, a customer's attribution) are dated rows.

PARTNER_TYPES = ("msp", "var", "distributor", "reseller", "affiliate", "referral")
PARTNER_STATUSES = ("active", "suspended", "terminated")
PARTNER_DEPTH_MAX = 5
ATTRIBUTION_SOURCES = ("deal_registration", "referral_link", "manual", "import")
EVENT_TYPES = ("invoice_paid", "refund", "chargeback", "chargeback_reversed")
EVENT_STATUSES = ("posted", "unattributed", "no_commission")

plans = Table(
    "plans",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
)

plan_versions = Table(
    "plan_versions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("plan_id", String(64), ForeignKey("plans.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("effective_from_us", BigInteger, nullable=False),
    Column("terms", Text, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    CheckConstraint("version >= 1", name="version_positive"),
    UniqueConstraint("plan_id", "version"),
    UniqueConstraint("plan_id", "effective_from_us"),
)

# A partner's parent is fixed at enrolment and must already exist, so the hierarchy has no cycles;
# the composite key (parent_id, parent_depth) -> (id, depth) lets the database hold depth <= 5.
partners = Table(
    "partners",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("type", String(16), nullable=False),
    Column("parent_id", String(64), nullable=True),
    Column("parent_depth", Integer, nullable=True),
    Column("depth", Integer, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    CheckConstraint(f"type IN ({', '.join(repr(t) for t in PARTNER_TYPES)})", name="type"),
    CheckConstraint(f"depth BETWEEN 1 AND {PARTNER_DEPTH_MAX}", name="depth_range"),
    CheckConstraint("(parent_id IS NULL AND parent_depth IS NULL AND depth = 1) OR "
                    "(parent_id IS NOT NULL AND parent_depth = depth - 1)", name="parent_depth"),
    UniqueConstraint("id", "depth"),
    ForeignKeyConstraint(["parent_id", "parent_depth"], ["partners.id", "partners.depth"],
                         name="fk_partners_parent_partners"),
)

partner_statuses = Table(
    "partner_statuses",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("partner_id", String(64), ForeignKey("partners.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("effective_at_us", BigInteger, nullable=False),
    Column("recorded_at_us", BigInteger, nullable=False),
    CheckConstraint(f"status IN ({', '.join(repr(t) for t in PARTNER_STATUSES)})", name="status"),
    Index(None, "partner_id", "effective_at_us"),
    Index("uq_partner_statuses_partner_id_id", "partner_id", "id", unique=True),  # partner_enrolments' key
)

partner_plans = Table(
    "partner_plans",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("partner_id", String(64), ForeignKey("partners.id"), nullable=False),
    Column("plan_id", String(64), ForeignKey("plans.id"), nullable=False),
    Column("effective_from_us", BigInteger, nullable=False),
    Column("recorded_at_us", BigInteger, nullable=False),
    UniqueConstraint("partner_id", "effective_from_us"),
    Index("uq_partner_plans_partner_id_id", "partner_id", "id", unique=True),  # partner_enrolments' key
)

# A partner's first status and first plan, by the commit (migration 0060): a trigger after each insert
# into partners adds its row with both ids 0, "not yet"; the partner's first status and plan write
# theirs, and a foreign key deferred to the commit asks for each, of the partner's own.
partner_enrolments = Table(
    "partner_enrolments",
    metadata,
    Column("partner_id", String(64), ForeignKey("partners.id"), primary_key=True),
    Column("status_id", BigInteger, nullable=False),
    Column("plan_id", BigInteger, nullable=False),
    ForeignKeyConstraint(["partner_id", "status_id"], ["partner_statuses.partner_id", "partner_statuses.id"],
                         name="fk_partner_enrolments_status_partner_statuses", deferrable=True, initially="DEFERRED"),
    ForeignKeyConstraint(["partner_id", "plan_id"], ["partner_plans.partner_id", "partner_plans.id"],
                         name="fk_partner_enrolments_plan_partner_plans", deferrable=True, initially="DEFERRED"),
)

# A program fact withdrawn before it started (migration 0040): a partner's status or plan change, a
# plan's version or a customer's attribution, as it stood in its table, from which inserting this row
# removes it. `value` is what the fact said: the status, the plan, the version's number, the
# attribution's partner; `detail` the version's terms or the attribution's source.
WITHDRAWN_FACT_TABLES = ("partner_statuses", "partner_plans", "plan_versions", "attributions")
program_withdrawals = Table(
    "program_withdrawals",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("fact_table", String(32), nullable=False),
    Column("fact_id", BigInteger, nullable=False),
    Column("subject_id", String(64), nullable=False, index=True),
    Column("starts_us", BigInteger, nullable=False),
    Column("value", String(64), nullable=False),
    Column("detail", Text, nullable=True),
    Column("fact_recorded_at_us", BigInteger, nullable=False),
    Column("recorded_at_us", BigInteger, nullable=False),
    UniqueConstraint("fact_table", "fact_id"),
    CheckConstraint(f"fact_table IN ({', '.join(repr(t) for t in WITHDRAWN_FACT_TABLES)})", name="fact_table"),
)

# The program's facts, chained in the order recorded (ledger/program_chain.py, migration 0053), and the
# revenue events that posted nothing (migration 0056), the API keys and their revocations (migration
# 0057): each fact of its tables has one row here, naming its table and id, with a SHA-256 of the
# previous row's hash and the fact's content. `fact_id` is the fact's id as text (plans, partners,
# customers, events and keys have text ids, the others integers; a revocation's is its key's).
PROGRAM_CHAIN_TABLES = ("plans", "plan_versions", "partners", "partner_statuses", "partner_plans", "customers",
                        "attributions", "program_withdrawals", "revenue_events", "api_keys", "api_key_revocations")
program_chain = Table(
    "program_chain",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=False),
    Column("fact_table", String(32), nullable=False),
    Column("fact_id", String(64), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    CheckConstraint("id >= 1", name="id_positive"),
    CheckConstraint(f"fact_table IN ({', '.join(repr(t) for t in PROGRAM_CHAIN_TABLES)})", name="fact_table"),
    CheckConstraint("length(hash) = 64 AND length(prev_hash) = 64", name="hash_length"),
    UniqueConstraint("fact_table", "fact_id"),
)

# A fact inserted and not yet chained: a trigger after each insert into a fact's table adds it, its row
# of the chain removes it, and a foreign key deferred to the commit asks for that row (migration
# 0053). Empty between transactions.
program_chain_due = Table(
    "program_chain_due",
    metadata,
    Column("fact_table", String(32), primary_key=True),
    Column("fact_id", String(64), primary_key=True),
    ForeignKeyConstraint(["fact_table", "fact_id"], ["program_chain.fact_table", "program_chain.fact_id"],
                         name="fk_program_chain_due_fact_table_program_chain", deferrable=True, initially="DEFERRED"),
)

# The currencies the books keep (`ledger.currencies`), by migration 0059: a line's and a revenue
# event's currency is one of them. Changed by a migration only.
currencies = Table(
    "currencies",
    metadata,
    Column("code", String(3), primary_key=True),
    CheckConstraint("length(code) = 3", name="three_letters"),
)

# The partner program's revision: one row, which the database moves up by one with every insert
# into the tables a `partners.Program` reads (migrations/versions/0010_program_revision.py), and with
# every fact withdrawn from them (0040). Equal revisions mean equal programs, so a process keeps its
# Program while the revision stands. Python never writes it.
program_revision = Table(
    "program_revision",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("revision", BigInteger, nullable=False),
    CheckConstraint("id = 1", name="one_row"),
)

customers = Table(
    "customers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("created_at_us", BigInteger, nullable=False),
)

attributions = Table(
    "attributions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("customer_id", String(64), ForeignKey("customers.id"), nullable=False),
    Column("partner_id", String(64), ForeignKey("partners.id"), nullable=False),
    Column("effective_from_us", BigInteger, nullable=False),
    Column("source", String(32), nullable=False),
    Column("recorded_at_us", BigInteger, nullable=False),
    CheckConstraint(f"source IN ({', '.join(repr(t) for t in ATTRIBUTION_SOURCES)})", name="source"),
    UniqueConstraint("customer_id", "effective_from_us"),
)

# Revenue events are the source documents. `first_eligible_customer_id` is set on the first payment
# that claims its customer's CPA: unique, so a customer is claimed first once (`cpa_claims_taken`
# holds the later claims).
revenue_events = Table(
    "revenue_events",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("type", String(24), nullable=False),
    Column("customer_id", String(64), nullable=False),
    Column("invoice_id", String(64), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("occurred_at_us", BigInteger, nullable=False),
    Column("recorded_at_us", BigInteger, nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("first_eligible_customer_id", String(64), nullable=True, unique=True),
    CheckConstraint(f"type IN ({', '.join(repr(t) for t in EVENT_TYPES)})", name="type"),
    CheckConstraint(f"status IN ({', '.join(repr(t) for t in EVENT_STATUSES)})", name="status"),
    CheckConstraint("amount_minor > 0", name="amount_positive"),
    Index(None, "invoice_id"),
)

# A journal transaction naming a revenue event not yet stored, keyed by the event: a trigger after
# each insert into the journal lists it, the event's insert takes it off, and a foreign key deferred
# to the commit asks for the event (migration 0065). The service leaves it empty.
revenue_events_due = Table(
    "revenue_events_due",
    metadata,
    Column("event_id", String(64), ForeignKey("revenue_events.id", deferrable=True, initially="DEFERRED"),
           primary_key=True),
    Column("transaction_id", Id, primary_key=True, autoincrement=False),
)

# A payment dated before its customer's CPA claimant takes the claim from it, once the claimant's
# bounty is reversed: the CPA goes to the first eligible paid invoice by date, in whatever order
# billing sends them (migration 0038, whose guards hold the rest).
cpa_claims_taken = Table(
    "cpa_claims_taken",
    metadata,
    Column("event_id", String(64), ForeignKey("revenue_events.id"), primary_key=True),
    Column("customer_id", String(64), nullable=False, index=True),
    Column("from_event_id", String(64), ForeignKey("revenue_events.id"), nullable=False, unique=True),
    CheckConstraint("event_id <> from_event_id", name="another"),
)

# The instant a rule took effect, for `verify` to judge the rows written before it by the rule of
# their time: `cpa_first_by_date`, the CPA's claims taken by date (migration 0038).
rules_since = Table(
    "rules_since",
    metadata,
    Column("rule", String(64), primary_key=True),
    Column("since_us", BigInteger, nullable=False),
)

# The reinstatements by the event they name (migration 0058): an event that is not a won dispute
# is named by none, which each new event's rule reads in this index, as good as empty, not among the
# journal's rows naming the event.
_REINSTATEMENT = journal_transactions.c.kind.in_(("accrual", "cpa", "override")) & \
    journal_transactions.c.accrual_id.is_not(None)
Index("ix_journal_transactions_reinstatement_event_id", journal_transactions.c.event_id,
      sqlite_where=_REINSTATEMENT, postgresql_where=_REINSTATEMENT)

# One invoice is paid once: the database refuses a second `invoice_paid` for the same invoice.
# A customer's CPA bounty is posted once (migration 0020's trigger, which this index serves: since
# 0055 it reads the latest bounty before a new one, at the end of the customer's entries); a
# reinstatement names its original.
Index("ix_journal_transactions_cpa_customer", journal_transactions.c.customer_id, journal_transactions.c.id,
      sqlite_where=(journal_transactions.c.kind == "cpa") & journal_transactions.c.accrual_id.is_(None),
      postgresql_where=(journal_transactions.c.kind == "cpa") & journal_transactions.c.accrual_id.is_(None))

# What is posted against a piece (clawbacks, releases, reinstatements) names it; migration 0022's trigger
# reads them by this index, which the accruals of paid invoices (naming none) do not enter.
Index("ix_journal_transactions_accrual_id", journal_transactions.c.accrual_id,
      sqlite_where=journal_transactions.c.accrual_id.is_not(None),
      postgresql_where=journal_transactions.c.accrual_id.is_not(None))

# Refunds, chargebacks and won disputes stay within their paid invoice at every instant: a trigger
# refuses the rows that would not (migration 0014).
Index("uq_revenue_events_paid_invoice", revenue_events.c.invoice_id, unique=True,
      sqlite_where=revenue_events.c.type == "invoice_paid",
      postgresql_where=revenue_events.c.type == "invoice_paid")

open_holds = Table(
    "open_holds",
    metadata,
    Column("accrual_id", Id, ForeignKey("journal_transactions.id"), primary_key=True, autoincrement=False),
    Column("matures_at_us", BigInteger, nullable=False),
    Index(None, "matures_at_us", "accrual_id"),  # the order the release job takes holds in (migration 0019)
)

APPEND_ONLY_TABLES = JOURNAL_TABLES + (
    "plans", "plan_versions", "partners", "partner_statuses", "partner_plans", "customers", "attributions",
    "revenue_events", "cpa_claims_taken", "rules_since", "program_withdrawals", "program_chain",
)

# ---- periods and payouts (append-only) ----

# A closed period: its snapshot of every account's cumulative debits and credits at the period's
# end, the journal head when it closed, and a close hash chaining the previous close.
period_closes = Table(
    "period_closes",
    metadata,
    Column("period", String(7), primary_key=True),
    Column("starts_at_us", BigInteger, nullable=False, unique=True),
    Column("ends_at_us", BigInteger, nullable=False, unique=True),
    Column("closed_at_us", BigInteger, nullable=False),
    Column("transaction_count", BigInteger, nullable=False),
    Column("chain_head_id", BigInteger, nullable=False),
    Column("chain_head_hash", String(64), nullable=False),
    Column("prev_close_hash", String(64), nullable=False),
    Column("close_hash", String(64), nullable=False, unique=True),
    # The program's chain head when it closed, in its close hash (ledger/program_chain.py); NULL before
    # migration 0053.
    Column("program_head_id", BigInteger, nullable=True),
    Column("program_head_hash", String(64), nullable=True),
    CheckConstraint("ends_at_us > starts_at_us", name="bounds"),
    CheckConstraint("transaction_count >= 0", name="count"),
)

period_snapshots = Table(
    "period_snapshots",
    metadata,
    Column("period", String(7), ForeignKey("period_closes.period", deferrable=True, initially="DEFERRED"),
           primary_key=True),
    Column("account_id", Id, ForeignKey("accounts.id"), primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("debit_minor", BigInteger, nullable=False),
    Column("credit_minor", BigInteger, nullable=False),
    CheckConstraint("debit_minor >= 0 AND credit_minor >= 0", name="non_negative"),
)

# Every partner's statement lines of a closed period, stored by its close (ledger/statement_lines.py):
# one JSON array per period, partner and currency, each line an array of StatementLine's fields, in
# posting order (migration 0016; `json` on PostgreSQL, text that must be a JSON array on SQLite).
statement_documents = Table(
    "statement_documents",
    metadata,
    Column("period", String(7), ForeignKey("period_closes.period"), primary_key=True),
    Column("partner_id", String(64), primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("lines", Text().with_variant(JSON(), "postgresql"), nullable=False),
)

# A closed period's statement lines as the API writes them, per period, partner and currency, with
# its totals as written and the sums of pending and available, written by the close beside its
# document (ledger/statement_bodies.py, migration 0035).
statement_bodies = Table(
    "statement_bodies",
    metadata,
    Column("period", String(7), ForeignKey("period_closes.period"), primary_key=True),
    Column("partner_id", String(64), primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("lines", Text().with_variant(JSON(), "postgresql"), nullable=False),
    Column("totals", Text().with_variant(JSON(), "postgresql"), nullable=False),
    Column("pending_minor", BigInteger, nullable=False),
    Column("available_minor", BigInteger, nullable=False),
)

payout_runs = Table(
    "payout_runs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("at_us", BigInteger, nullable=False, unique=True),
    Column("created_at_us", BigInteger, nullable=False),
)

payouts = Table(
    "payouts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("run_id", String(40), ForeignKey("payout_runs.id"), nullable=False),
    Column("partner_id", String(64), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("transaction_id", Id, ForeignKey("journal_transactions.id"), nullable=False, unique=True),
    CheckConstraint("amount_minor > 0", name="amount_positive"),
    UniqueConstraint("run_id", "partner_id", "currency"),
    Index(None, "partner_id", "id"),
)

# A payout is resolved (settled or failed) at most once: the primary key holds it.
payout_resolutions = Table(
    "payout_resolutions",
    metadata,
    Column("payout_id", Id, ForeignKey("payouts.id"), primary_key=True, autoincrement=False),
    Column("outcome", String(8), nullable=False),
    Column("transaction_id", Id, ForeignKey("journal_transactions.id"), nullable=False, unique=True),
    Column("reason", String(500), nullable=True),
    Column("resolved_at_us", BigInteger, nullable=False),
    CheckConstraint("outcome IN ('settled', 'failed')", name="outcome"),
)

# A `payout` posting is recorded in `payouts` by the commit: a trigger after each payout header adds
# its id here, where a foreign key deferred to the commit asks for the record (migration 0026).
payout_records_due = Table(
    "payout_records_due",
    metadata,
    Column("transaction_id", Id, ForeignKey("payouts.transaction_id", deferrable=True, initially="DEFERRED"),
           primary_key=True, autoincrement=False),
)

# A `payout_settled` or `payout_failed` posting, or the reversal of a `payout` posting, has its
# resolution record by the commit: a trigger adds the posting here, where a foreign key deferred to
# the commit asks for the record (migration 0030).
payout_resolutions_due = Table(
    "payout_resolutions_due",
    metadata,
    Column("transaction_id", Id, ForeignKey("payout_resolutions.transaction_id", deferrable=True,
                                            initially="DEFERRED"), primary_key=True, autoincrement=False),
)

# The pieces whose release a transaction reversed, until the piece is reversed or holds nothing
# pending again (a release and the clawbacks from pending take its amount); a foreign key deferred
# to the commit asks for the piece's reversal of those still listed. Triggers write it, and it is
# empty between transactions (migration 0030).
unreleased_pieces_due = Table(
    "unreleased_pieces_due",
    metadata,
    Column("accrual_id", Id, ForeignKey("journal_transactions.reverses_id", deferrable=True, initially="DEFERRED"),
           primary_key=True, autoincrement=False),
)

APPEND_ONLY_TABLES = APPEND_ONLY_TABLES + (
    "period_closes", "period_snapshots", "statement_documents", "statement_bodies", "payout_runs", "payouts",
    "payout_resolutions", "payout_records_due", "payout_resolutions_due")
