"""The database holds a plan version's terms to what Python reads, for a writer that goes around
Python: migration 0018 held only that they are a JSON object. Terms of `{"rates": "lots"}` written
around the service were accepted, and every posting, every `verify` and every read of the plan
then failed on them (`ledger.terms.terms_from_json` refuses them).

The service stores terms as `ledger.terms.terms_to_json` writes them, and reads them back with
`parse_terms`. The database now refuses terms that are not:

- an object of exactly the seven terms (each once: a key written twice is refused, since JSON
  readers differ on which one counts);
- `rates`: 1 to 24 steps, each an object of exactly `from_month` (an integer from 1 to 1200,
  the first 1, each greater than the one before) and `rate` (a decimal string in [0, 1] with at
  most 10 decimals);
- `duration_months`: null or an integer from 1 to 1200; `hold_days`: an integer from 0 to 3650;
- `cpa` and `min_payout`: lists of objects of exactly `amount` and `currency`, the currency one the
  books keep (migration 0059's table), listed once, and the amount a decimal string, not negative,
  with at most the currency's minor digits and at most 15 integer digits, no more than the
  largest stored amount;
- `negative_balance`: `carry_forward` or `reset`; `override`: null or an object of exactly `rate`
  (as a step's) and `basis` (`revenue` or `commission`).

That is narrower than `parse_terms` takes from a request (which lets `cpa` and `override` be left
out, a money list be null, and an amount be negative zero; and, on SQLite, a key be written with
an escape, `"\\u0072ates"`), and takes nothing it refuses: a property test holds the database to
Python both ways over terms drawn near the service's own, written as `json.dumps` writes them
(`tests/integration/test_plan_terms_held.py`), and the texts the service writes are accepted. The
currencies' minor digits are a frozen copy of `ledger.currencies`' (a test compares them). Rows
already written are left as they are: `revshare verify` names terms it cannot read
(`plan_terms_unreadable`).

SQLite: a row trigger after insert, whose condition reads the terms with the JSON functions (and
refuses a NUL, in the text or escaped in it: SQLite's functions stop at one, where Python reads
on); PostgreSQL: a function reading them
as `json` (not `jsonb`, which would read `1e2` as the integer 100, where Python reads a float). A
plan version is written rarely: no path of the ledger's posting pays for either.

Revision ID: 0061
Revises: 0060
Create Date: 2026-12-07
"""

from alembic import op

revision = "0061"
down_revision = "0060"
branch_labels = None
depends_on = None

SETTINGS = "SET search_path = public, pg_temp SET jit = off"
NAME = "terms_stated"
MESSAGE = ("plan_versions: terms state the seven terms of a plan, each of its type and range,"
           " as ledger.terms writes them")
TERMS = ("cpa", "duration_months", "hold_days", "min_payout", "negative_balance", "override", "rates")
RATE_STEPS_MAX, MONTHS_MAX, HOLD_DAYS_MAX, INTEGER_DIGITS_MAX = 24, 1200, 3650, 15
MINOR_MAX = "9223372036854775807"  # a stored amount's largest, as text of its 19 digits
# The currencies whose minor unit is not 2 digits (`ledger.currencies`, frozen: a test compares).
DIGITS_NOT_TWO = {
    0: ("ADP ALK AOK AON AOR BAN BEC BEL BGM BGO BIF BOL BUK BYR CLE CLP CSK DDM DJF ECS ESA ESB ESP "
        "GEK GNF GNS GQE GWE ISK ITL JPY KMF KRH KRO KRW LUC LUL MDC MGF MKN MLF MTP MVP MXP PEI PTE "
        "PYG ROL RWF SDP SUR TJR TPE TRL UGS UGX UYI VND VNN VUV XAF XOF XPF YDD"),
    3: "BHD IQD JOD KWD LYD OMR TND",
    4: "CLF UYW",
}


def digits_of(code: str) -> str:
    """SQL: the minor digits of the currency `code` (an SQL expression), one the books keep."""
    cases = " ".join(f"WHEN {code} IN ({', '.join(repr(c) for c in codes.split())}) THEN {digits}"
                     for digits, codes in DIGITS_NOT_TWO.items())
    return f"(CASE {cases} ELSE 2 END)"


# ---- SQLite: one expression over the terms' text, 1 when they are as Python writes them ----
# A JSON function given a text that is not JSON raises (json_each's `value` of a string member is
# the string itself), so each check runs only once those before it hold: `_all` chains them by
# CASE, which evaluates in order, where AND need not.

def _all(*checks: str) -> str:
    """SQL: 1 when every check is true, each evaluated only once those before it are; else 0."""
    return "CASE " + " ".join(f"WHEN ({check}) IS NOT 1 THEN 0" for check in checks) + " ELSE 1 END"


def _sqlite_keys(value: str, keys: tuple[str, ...]) -> str:
    """That the JSON object `value` has exactly `keys`, each once."""
    listed = ", ".join(f"'{key}'" for key in keys)
    return (f"(SELECT count(*) = {len(keys)} AND count(DISTINCT key) = {len(keys)}"
            f" AND sum(key IN ({listed})) = {len(keys)} FROM json_each({value}))")


def _sqlite_rate(value: str, path: str) -> str:
    rate = f"json_extract({value}, '{path}')"
    return _all(f"json_type({value}, '{path}') = 'text'",
                f"{rate} GLOB '[0-9]' OR ({rate} GLOB '[0-9].[0-9]*' AND length({rate}) <= 12"
                f" AND substr({rate}, 3) NOT GLOB '*[^0-9]*')",
                f"{rate} GLOB '0*' OR {rate} = '1' OR ({rate} GLOB '1.*' AND substr({rate}, 3) NOT GLOB '*[^0]*')")


def _sqlite_integer(value: str, path: str, low: int, high: int) -> str:
    return _all(f"json_type({value}, '{path}') = 'integer'",
                f"json_extract({value}, '{path}') BETWEEN {low} AND {high}")


def _sqlite_amount(amount: str, digits: str) -> str:
    dot = f"instr({amount}, '.')"
    whole = f"(CASE WHEN {dot} = 0 THEN {amount} ELSE substr({amount}, 1, {dot} - 1) END)"
    fraction = f"(CASE WHEN {dot} = 0 THEN '' ELSE substr({amount}, {dot} + 1) END)"
    return _all(f"{whole} <> '' AND {whole} NOT GLOB '*[^0-9]*' AND length({whole}) <= {INTEGER_DIGITS_MAX}",
                f"{fraction} NOT GLOB '*[^0-9]*' AND ({dot} = 0 OR length({fraction}) BETWEEN 1 AND {digits})",
                f"length({whole}) + {digits} < 19"  # else compared as texts of 19 digits
                f" OR {whole} || substr({fraction} || '0000', 1, {digits}) <= '{MINOR_MAX}'")


def _sqlite_money_list(terms: str, name: str) -> str:
    path = f"'$.{name}'"
    currency, amount = "json_extract(m.value, '$.currency')", "json_extract(m.value, '$.amount')"
    item = _all("m.type = 'object'", _sqlite_keys("m.value", ("amount", "currency")),
                "json_type(m.value, '$.currency') = 'text' AND json_type(m.value, '$.amount') = 'text'",
                f"EXISTS (SELECT 1 FROM currencies c WHERE c.code = {currency})",
                _sqlite_amount(amount, digits_of(currency)))
    return _all(f"json_type({terms}, {path}) = 'array'",
                f"NOT EXISTS (SELECT 1 FROM json_each({terms}, {path}) m WHERE ({item}) IS NOT 1)",
                f"(SELECT count(*) = count(DISTINCT {currency}) FROM json_each({terms}, {path}) m)")


def sqlite_stated(terms: str) -> str:
    """SQL: 1 when `terms`, the text of a JSON object, is as Python writes terms, else 0 (never NULL)."""
    step = _all("r.type = 'object'", _sqlite_keys("r.value", ("from_month", "rate")),
                _sqlite_integer("r.value", "$.from_month", 1, MONTHS_MAX), _sqlite_rate("r.value", "$.rate"),
                "CASE WHEN r.key = 0 THEN json_extract(r.value, '$.from_month') = 1"
                f" ELSE json_extract(r.value, '$.from_month') > json_extract({terms}, '$.rates[' || (r.key - 1) || "
                "'].from_month') END")
    override = f"json_extract({terms}, '$.override')"
    return _all(
        _sqlite_keys(terms, TERMS),
        f"json_type({terms}, '$.rates') = 'array'"
        f" AND json_array_length({terms}, '$.rates') BETWEEN 1 AND {RATE_STEPS_MAX}",
        f"NOT EXISTS (SELECT 1 FROM json_each({terms}, '$.rates') r WHERE ({step}) IS NOT 1)",
        f"json_type({terms}, '$.duration_months') = 'null'"
        f" OR ({_sqlite_integer(terms, '$.duration_months', 1, MONTHS_MAX)}) = 1",
        _sqlite_integer(terms, "$.hold_days", 0, HOLD_DAYS_MAX),
        _sqlite_money_list(terms, "cpa"),
        _sqlite_money_list(terms, "min_payout"),
        f"json_type({terms}, '$.negative_balance') = 'text'"
        f" AND json_extract({terms}, '$.negative_balance') IN ('carry_forward', 'reset')",
        f"CASE json_type({terms}, '$.override') WHEN 'null' THEN 1 WHEN 'object' THEN "
        + _all(_sqlite_keys(override, ("basis", "rate")), _sqlite_rate(terms, "$.override.rate"),
               f"json_type({terms}, '$.override.basis') = 'text'"
               f" AND json_extract({terms}, '$.override.basis') IN ('revenue', 'commission')")
        + " ELSE 0 END",
    )


def _sqlite() -> str:
    terms = "NEW.terms"
    # A NUL, in the text or escaped in one of its strings: SQLite reads a text up to it, Python whole.
    nul = f"instr(CAST({terms} AS BLOB), X'00') > 0 OR instr({terms}, '\\u0000') > 0"
    return (f"CREATE TRIGGER trg_plan_versions_{NAME} AFTER INSERT ON plan_versions\n"
            f"WHEN CASE WHEN json_valid({terms}) THEN CASE WHEN json_type({terms}) = 'object'"
            f" THEN {nul} OR {sqlite_stated(terms)} = 0 ELSE 0 END ELSE 0 END\n"  # not an object: 0018's rule
            f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END")


# ---- PostgreSQL: a function over the terms read as json ----

POSTGRES_FUNCTION = f"""
CREATE FUNCTION revshare_json_keys_are(value json, keys text[]) RETURNS boolean LANGUAGE sql IMMUTABLE
{SETTINGS} AS $$
  SELECT CASE WHEN json_typeof(value) = 'object' THEN (SELECT count(*) = cardinality(keys)
    AND count(DISTINCT k) = cardinality(keys) AND coalesce(bool_and(k = ANY (keys)), false)
    FROM json_object_keys(value) k) ELSE false END
$$;

CREATE FUNCTION revshare_rate_stated(value json) RETURNS boolean LANGUAGE sql IMMUTABLE {SETTINGS} AS $$
  SELECT coalesce(json_typeof(value) = 'string' AND (value #>> '{{}}') ~ '^[0-9](\\.[0-9]{{1,10}})?$'
    AND (value #>> '{{}}')::numeric <= 1, false)
$$;

CREATE FUNCTION revshare_integer_stated(value json, low integer, high integer) RETURNS boolean LANGUAGE sql
IMMUTABLE {SETTINGS} AS $$
  SELECT coalesce(json_typeof(value) = 'number' AND (value #>> '{{}}') ~ '^-?[0-9]{{1,9}}$'
    AND (value #>> '{{}}')::integer BETWEEN low AND high, false)
$$;

CREATE FUNCTION revshare_money_list_stated(items json) RETURNS boolean LANGUAGE plpgsql STABLE {SETTINGS} AS $$
DECLARE
  item json;
  currency text;
  amount text;
  digits integer;
  parts text[];
  seen text[] := '{{}}';
BEGIN
  IF json_typeof(items) IS DISTINCT FROM 'array' THEN
    RETURN false;
  END IF;
  FOR item IN SELECT json_array_elements(items) LOOP
    IF NOT revshare_json_keys_are(item, ARRAY['amount', 'currency'])
       OR json_typeof(item -> 'currency') <> 'string' OR json_typeof(item -> 'amount') <> 'string' THEN
      RETURN false;
    END IF;
    currency := item ->> 'currency';
    amount := item ->> 'amount';
    IF NOT EXISTS (SELECT 1 FROM currencies c WHERE c.code = currency) OR currency = ANY (seen) THEN
      RETURN false;
    END IF;
    seen := seen || currency;
    digits := {digits_of('currency')};
    parts := regexp_match(amount, '^([0-9]{{1,{INTEGER_DIGITS_MAX}}})(?:\\.([0-9]+))?$');
    IF parts IS NULL OR length(coalesce(parts[2], '')) > digits
       OR (parts[1] || rpad(coalesce(parts[2], ''), digits, '0'))::numeric > {MINOR_MAX} THEN
      RETURN false;
    END IF;
  END LOOP;
  RETURN true;
END $$;

CREATE FUNCTION revshare_terms_stated(value text) RETURNS boolean LANGUAGE plpgsql STABLE {SETTINGS} AS $$
DECLARE
  terms json := value::json;
  step json;
  previous integer := 0;
BEGIN
  IF NOT revshare_json_keys_are(terms, ARRAY[{', '.join(repr(term) for term in TERMS)}])
     OR json_typeof(terms -> 'rates') <> 'array'
     OR json_array_length(terms -> 'rates') NOT BETWEEN 1 AND {RATE_STEPS_MAX} THEN
    RETURN false;
  END IF;
  FOR step IN SELECT json_array_elements(terms -> 'rates') LOOP
    IF NOT revshare_json_keys_are(step, ARRAY['from_month', 'rate'])
       OR NOT revshare_integer_stated(step -> 'from_month', previous + 1, {MONTHS_MAX})
       OR (previous = 0 AND (step ->> 'from_month')::integer <> 1)
       OR NOT revshare_rate_stated(step -> 'rate') THEN
      RETURN false;
    END IF;
    previous := (step ->> 'from_month')::integer;
  END LOOP;
  RETURN (json_typeof(terms -> 'duration_months') = 'null'
          OR revshare_integer_stated(terms -> 'duration_months', 1, {MONTHS_MAX}))
    AND revshare_integer_stated(terms -> 'hold_days', 0, {HOLD_DAYS_MAX})
    AND revshare_money_list_stated(terms -> 'cpa') AND revshare_money_list_stated(terms -> 'min_payout')
    AND coalesce(json_typeof(terms -> 'negative_balance') = 'string'
                 AND terms ->> 'negative_balance' IN ('carry_forward', 'reset'), false)
    AND (json_typeof(terms -> 'override') = 'null'
         OR (revshare_json_keys_are(terms -> 'override', ARRAY['basis', 'rate'])
             AND revshare_rate_stated(terms -> 'override' -> 'rate')
             AND coalesce(json_typeof(terms -> 'override' -> 'basis') = 'string'
                          AND terms -> 'override' ->> 'basis' IN ('revenue', 'commission'), false)));
END $$;

CREATE FUNCTION plan_versions_{NAME}() RETURNS trigger LANGUAGE plpgsql {SETTINGS} AS $$
BEGIN
  IF revshare_is_json_object(NEW.terms) AND NOT revshare_terms_stated(NEW.terms) THEN
    RAISE EXCEPTION '{MESSAGE}' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER trg_plan_versions_{NAME} AFTER INSERT ON plan_versions
FOR EACH ROW EXECUTE FUNCTION plan_versions_{NAME}()"""
POSTGRES_FUNCTIONS = ("plan_versions_terms_stated()", "revshare_terms_stated(text)", "revshare_money_list_stated(json)",
                      "revshare_integer_stated(json, integer, integer)", "revshare_rate_stated(json)",
                      "revshare_json_keys_are(json, text[])")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in POSTGRES_FUNCTION.split(";\n\n"):
            op.execute(statement)
        return
    op.execute(_sqlite())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER trg_plan_versions_{NAME} ON plan_versions")
        for function in POSTGRES_FUNCTIONS:
            op.execute(f"DROP FUNCTION {function}")
        return
    op.execute(f"DROP TRIGGER trg_plan_versions_{NAME}")
