"""The database keeps a line's and a revenue event's currency to the codes the books keep, as Python
does (`ledger.money.currency_exponent`): migration 0018 held only three capital letters. A line
of 123.45 `ZZZ` written around the service was accepted; `revshare verify` named it
(`currency_unknown`), but every payout run then failed for every partner, and the trial balance,
the liabilities report and the partner's balance could not be read.

The codes are a table, `currencies`, of every ISO 4217 code py-moneyed 3.0 gives a decimal minor
unit, less those no money is paid in (`ledger.currencies` holds the same list, and its digits;
a test holds the three alike). Its rows change by a migration only: the database refuses an
insert, update or delete (and a truncate), and the application role may only read it.

A line is held through the running totals (migration 0008): each line adds to its account's row
for its currency, and a currency new to an account inserts that row, which is refused when the
currency is not kept. So an account's first line in a currency pays one probe of the table, and
every later line nothing. A revenue event pays one probe (SQLite: a row trigger; PostgreSQL:
migration 0034's statement function, as 0058 left it). Rows already written are left as they are:
`revshare verify` names them.

Cost on the bulk ingest path (measured as for migration 0058: 10,000 paid invoices a transaction,
with this revision's guards and without them, in turn six times each, medians): SQLite 2.177 s
against 2.160, PostgreSQL 1.684 s against 1.684.

Revision ID: 0059
Revises: 0058
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from migrations.earlier import revision as _revision

revision = "0059"
down_revision = "0058"
branch_labels = None
depends_on = None

_0018 = _revision("0018_rules_held.py")  # sqlite_rule, postgres_rule
_0034 = _revision("0034_statuses_and_close_times_held.py")  # the event guard's name
_0049 = _revision("0049_guards_planned_for_a_growing_journal.py")  # replaced()
_0058 = _revision("0058_reinstatements_and_payouts_held.py")  # the event guard as it stands

TABLE = "currencies"
APP_ROLE = "revshare_app"
SETTINGS = "SET search_path = public, pg_temp SET jit = off"
CODES = (
    "ADP AED AFA AFN ALK ALL AMD ANG AOA AOK AON AOR ARA ARL ARM ARP ARS ATS AUD AWG AZM AZN BAD BAM "
    "BAN BBD BDT BEC BEF BEL BGL BGM BGN BGO BHD BIF BMD BND BOB BOL BOP BOV BRB BRC BRE BRL BRN BRR "
    "BRZ BSD BTN BUK BWP BYB BYN BYR BZD CAD CDF CHE CHF CHW CLE CLF CLP CNH CNX CNY COP COU CRC CSD "
    "CSK CUC CUP CVE CYP CZK DDM DEM DJF DKK DOP DZD ECS ECV EEK EGP ERN ESA ESB ESP ETB EUR FIM FJD "
    "FKP FRF GBP GEK GEL GHC GHS GIP GMD GNF GNS GQE GRD GTQ GWE GWP GYD HKD HNL HRD HRK HTG HUF IDR "
    "IEP ILP ILR ILS IMP INR IQD IRR ISJ ISK ITL JMD JOD JPY KES KGS KHR KMF KPW KRH KRO KRW KWD KYD "
    "KZT LAK LBP LKR LRD LSL LTL LTT LUC LUF LUL LVL LVR LYD MAD MAF MCF MDC MDL MGA MGF MKD MKN MLF "
    "MMK MNT MOP MRO MRU MTL MTP MUR MVP MVR MWK MXN MXP MXV MYR MZE MZM MZN NAD NGN NIC NIO NLG NOK "
    "NPR NZD OMR PAB PEI PEN PES PGK PHP PKR PLN PLZ PTE PYG QAR RHD ROL RON RSD RUB RUR RWF SAR SBD "
    "SCR SDD SDG SDP SEK SGD SHP SIT SKK SLE SLL SOS SRD SRG SSP STD STN SUR SVC SYP SZL THB TJR TJS "
    "TMM TMT TND TOP TPE TRL TRY TTD TVD TWD TZS UAH UAK UGS UGX USD USN USS UYI UYP UYU UYW UZS VEB "
    "VED VEF VES VND VNN VUV WST XAF XCD XOF XPF YDD YER YUD YUM YUN YUR ZAL ZAR ZMK ZMW ZRN ZRZ ZWD "
    "ZWL ZWN ZWR "
)
UNKNOWN = "NOT EXISTS (SELECT 1 FROM currencies c WHERE c.code = n.currency)"
LINE_MESSAGE = "journal_lines: a currency is one the books keep, an ISO 4217 code with a minor unit"
EVENT_MESSAGE = "revenue_events: a currency is one the books keep, an ISO 4217 code with a minor unit"
CHANGED_MESSAGE = "currencies: the currencies the books keep change by a migration only"
ROW_RULES = (  # (table, name, refused when, message); the second on SQLite alone
    ("account_totals", "currency_kept", UNKNOWN, LINE_MESSAGE),
    ("revenue_events", "currency_kept", UNKNOWN, EVENT_MESSAGE),
)

POSTGRES_UNCHANGED = f"""
CREATE FUNCTION {TABLE}_unchanged() RETURNS trigger LANGUAGE plpgsql {SETTINGS} AS $$
BEGIN
  RAISE EXCEPTION '{CHANGED_MESSAGE}' USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER trg_{TABLE}_unchanged BEFORE INSERT OR UPDATE OR DELETE ON {TABLE}
FOR EACH ROW EXECUTE FUNCTION {TABLE}_unchanged();

CREATE TRIGGER trg_{TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE}
FOR EACH STATEMENT EXECUTE FUNCTION {TABLE}_unchanged()"""


def event_guard() -> str:
    """Migration 0058's event guard, refusing first an event in a currency the books do not keep."""
    return _0058.refusing_first(_0058.event_guard(), UNKNOWN, EVENT_MESSAGE)


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    table = op.create_table(TABLE, sa.Column("code", sa.String(3), nullable=False),
                            sa.PrimaryKeyConstraint("code", name=op.f(f"pk_{TABLE}")),
                            sa.CheckConstraint("length(code) = 3", name=op.f(f"ck_{TABLE}_three_letters")))
    op.bulk_insert(table, [{"code": code} for code in "".join(CODES).split()])
    if not postgres:
        for operation in ("INSERT", "UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER trg_{TABLE}_no_{operation.lower()} BEFORE {operation} ON {TABLE}\n"
                       f"BEGIN SELECT RAISE(ABORT, '{CHANGED_MESSAGE}'); END")
        for table_name, name, refused_when, message in ROW_RULES:
            for statement in _0018.sqlite_rule(table_name, name, refused_when, message, None).split(";\n\n"):
                op.execute(statement)
        return
    for statement in POSTGRES_UNCHANGED.split(";\n\n"):
        op.execute(statement)
    op.execute(f"GRANT SELECT ON {TABLE} TO {APP_ROLE}")
    table_name, name, refused_when, message = ROW_RULES[0]
    for statement in _0018.postgres_rule(table_name, name, refused_when, message, None).split(";\n\n"):
        op.execute(statement)
    op.execute(f"ALTER FUNCTION {table_name}_{name}() {SETTINGS}")
    _0049.replaced(_0034.STATEMENT_FUNCTION, event_guard())


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        _0049.replaced(_0034.STATEMENT_FUNCTION, _0058.event_guard())
        table_name, name, *_ = ROW_RULES[0]
        op.execute(f"DROP TRIGGER trg_{table_name}_{name} ON {table_name}")
        op.execute(f"DROP FUNCTION {table_name}_{name}()")
        op.drop_table(TABLE)  # its triggers with it
        op.execute(f"DROP FUNCTION {TABLE}_unchanged()")
        return
    for table_name, name, *_ in ROW_RULES:
        op.execute(f"DROP TRIGGER trg_{table_name}_{name}")
    op.drop_table(TABLE)
