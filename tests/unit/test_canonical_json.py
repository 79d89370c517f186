"""The journal's fast canonical JSON is json.dumps byte for byte, so request hashes never change."""

import json

from hypothesis import given
from hypothesis import strategies as st

from ledger import journal
from ledger.journal import Draft, Line

texts = st.text(max_size=40)  # any code point but lone surrogates: quotes, backslashes, controls, emoji
optional_texts = st.none() | texts
optional_ints = st.none() | st.integers(min_value=-(2**70), max_value=2**70)
lines = st.builds(Line, texts, texts, st.sampled_from(["D", "C"]) | texts, st.integers(-(2**70), 2**70))
drafts = st.builds(
    Draft, texts, st.integers(-(2**63), 2**63), st.lists(lines, max_size=4).map(tuple), texts,
    partner_id=optional_texts, customer_id=optional_texts, invoice_id=optional_texts, event_id=optional_texts,
    plan_version_id=optional_ints, accrual_id=optional_ints, reverses_id=optional_ints,
    matures_at_us=optional_ints, memo=optional_texts, event_hash=optional_texts)


def reference(draft: Draft) -> str:
    return json.dumps(journal._canonical(draft), separators=(",", ":"), ensure_ascii=False)


@given(drafts)
def test_the_fast_canonical_json_equals_json_dumps_for_any_draft(draft):
    assert journal.canonical_json(draft) == reference(draft)


@given(drafts, st.sampled_from(["plan_version_id", "matures_at_us", "memo", "event_hash"]),
       st.sampled_from([True, False, 1.5, ["a"], {"k": 1}]))
def test_a_value_of_another_type_takes_json_dumps_and_still_agrees(draft, field, value):
    odd = draft._replace(**{field: value})
    assert journal.canonical_json(odd) == reference(odd)


def test_a_known_draft_keeps_the_request_hash_the_json_dumps_implementation_gave_it():
    draft = journal.transfer("accrual", "expense:commission", "liability:partner:northwind:pending", "USD", 10_000,
                             effective_at_us=1_768_867_200_000_000, idempotency_key="e-1:accrual:northwind",
                             partner_id="northwind", customer_id="acme", invoice_id="inv-1", event_id="e-1",
                             plan_version_id=1, matures_at_us=1_771_459_200_000_000, memo='caf\u00e9 "\\" \n')
    assert journal.canonical_json(draft) == reference(draft)
    assert journal.request_hash(draft) == "1888f54cac5f7e9262b790ab3892dac500fce1aecc25604a0fae2bfc85ae4b71"
