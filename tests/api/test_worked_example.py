"""The public worked example of DESIGN.md ("Commission mechanics"), driven entirely over HTTP:
plan, partner, attribution, revenue events, hold releases, payout runs, settlement, refund,
statements for 2026-01..03 with the contract's amounts, and the closes of those months."""

import pytest

from tests.api.books import event_body, expect, instant, money, plan_body


@pytest.fixture
def northwind(fresh):
    call = fresh
    plan = call.created("/v1/plans", plan_body(
        "msp-standard", rates=[{"from_month": 1, "rate": "0.20"}], duration_months=12, hold_days=30,
        min_payout=[money("50.00")], negative_balance="carry_forward"))
    assert plan["version"] == 1
    call.partner("northwind", "msp-standard")
    call.attribute("acme", "northwind", "2026-01-15")
    call.partner_key("northwind")
    return call


def balance(call, as_of: str) -> tuple[str, str]:
    body = call.read(f"/v1/partners/northwind/balance?as_of={as_of}", as_="northwind")
    [usd] = body["balances"]
    assert usd["currency"] == "USD"
    return usd["pending"], usd["available"]


def just_after(day: str) -> str:
    return f"{day}T00:00:00.000001Z"


def statement(call, period: str) -> dict:
    body = call.read(f"/v1/partners/northwind/statement?period={period}")
    [usd] = body["currencies"]
    return {"status": body["period_status"], "close_hash": body["close_hash"],
            "opening": (usd["opening"]["pending"], usd["opening"]["available"]),
            "lines": [(line["kind"], line["effective_at"][:10], line["invoice_id"], line["event_id"], line["pending"],
                       line["available"]) for line in usd["lines"]],
            "totals": usd["totals"],
            "closing": (usd["closing"]["pending"], usd["closing"]["available"])}


def run_the_example(call) -> list[dict]:
    """The example's table, row by row, checking each balance; returns the two payout runs."""
    first = call.event("evt-inv-1", "acme", "inv-1", "500.00", "2026-01-20")
    assert (first["status"], first["commissions"]) == (
        "posted", [{"partner_id": "northwind", "kind": "accrual", "amount": money("100.00")}])
    assert balance(call, just_after("2026-01-20")) == ("100.00", "0.00")

    assert call.ok("/v1/holds/release", {"at": instant("2026-02-19")})["released"] == 1
    assert balance(call, "2026-02-19T00:00:00Z") == ("100.00", "0.00")
    assert balance(call, just_after("2026-02-19")) == ("0.00", "100.00")

    second = call.event("evt-inv-2", "acme", "inv-2", "500.00", "2026-02-20")
    assert second["commissions"] == [{"partner_id": "northwind", "kind": "accrual", "amount": money("100.00")}]
    assert balance(call, just_after("2026-02-20")) == ("100.00", "100.00")

    march = call.created("/v1/payout-runs", {"at": instant("2026-03-01")})
    assert [(p["partner_id"], p["amount"], p["status"]) for p in march["payouts"]] == [
        ("northwind", money("100.00"), "pending")]
    settled = call.ok(f"/v1/payouts/{march['payouts'][0]['id']}/settle",
                      {"reason": "wire confirmed", "at": instant("2026-03-03")})
    assert settled["status"] == "settled"
    assert balance(call, just_after("2026-03-01")) == ("100.00", "0.00")

    refund = call.event("evt-refund-1", "acme", "inv-1", "200.00", "2026-03-05", kind="refund")
    assert refund["commissions"] == [{"partner_id": "northwind", "kind": "clawback", "amount": money("-40.00")}]
    assert balance(call, just_after("2026-03-05")) == ("100.00", "-40.00")

    assert call.ok("/v1/holds/release", {"at": instant("2026-03-22")})["released"] == 1
    assert balance(call, just_after("2026-03-22")) == ("0.00", "60.00")

    april = call.created("/v1/payout-runs", {"at": instant("2026-04-01")})
    assert [(p["partner_id"], p["amount"]) for p in april["payouts"]] == [("northwind", money("60.00"))]
    assert balance(call, just_after("2026-04-01")) == ("0.00", "0.00")
    return [march, april]


JANUARY = {"opening": ("0.00", "0.00"), "lines": [("accrual", "2026-01-20", "inv-1", "evt-inv-1", "100.00", "0.00")],
           "totals": {"accrual": "100.00"}, "closing": ("100.00", "0.00")}
FEBRUARY = {"opening": ("100.00", "0.00"),
            "lines": [("release", "2026-02-19", "inv-1", "evt-inv-1", "-100.00", "100.00"),
                      ("accrual", "2026-02-20", "inv-2", "evt-inv-2", "100.00", "0.00")],
            "totals": {"accrual": "100.00", "release": "0.00"}, "closing": ("100.00", "100.00")}
MARCH = {"opening": ("100.00", "100.00"),
         "lines": [("payout", "2026-03-01", None, None, "0.00", "-100.00"),
                   ("clawback", "2026-03-05", "inv-1", "evt-refund-1", "0.00", "-40.00"),
                   ("release", "2026-03-22", "inv-2", "evt-inv-2", "-100.00", "100.00")],
         "totals": {"clawback": "-40.00", "payout": "-100.00", "release": "0.00"}, "closing": ("0.00", "60.00")}


def test_the_worked_example_over_http_gives_the_contracts_balances_and_statements(northwind):
    call = northwind
    run_the_example(call)
    for period, expected in (("2026-01", JANUARY), ("2026-02", FEBRUARY), ("2026-03", MARCH)):
        assert statement(call, period) == {"status": "open", "close_hash": None, **expected}, period
    response = call.get("/v1/partners/northwind/statement?period=2026-03&format=csv", as_="northwind")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    rows = [line.split(",") for line in response.get_data(as_text=True).splitlines()]
    assert [(row[3], row[7], row[9], row[11], row[12]) for row in rows[1:]] == [
        ("opening", "", "", "100.00", "100.00"),
        ("line", "payout", "", "0.00", "-100.00"),
        ("line", "clawback", "inv-1", "0.00", "-40.00"),
        ("line", "release", "inv-2", "-100.00", "100.00"),
        ("closing", "", "", "0.00", "60.00"),
    ]


def test_closing_the_example_months_keeps_their_statements_and_chains_their_hashes(northwind):
    call = northwind
    run_the_example(call)
    closes = [call.ok(f"/v1/periods/{period}/close") for period in ("2026-01", "2026-02", "2026-03")]
    assert [close["status"] for close in closes] == ["closed"] * 3
    assert [close["transaction_count"] for close in closes] == [1, 2, 4]  # March: payout, settlement, clawback, release
    assert [close["prev_close_hash"] for close in closes[1:]] == [close["close_hash"] for close in closes[:-1]]
    for close, expected in zip(closes, (JANUARY, FEBRUARY, MARCH)):
        assert statement(call, close["period"]) == {"status": "closed", "close_hash": close["close_hash"], **expected}
    assert balance(call, "2026-04-01") == ("0.00", "0.00")  # the end of 2026-04-01: after the April payout
    assert expect(call.post("/v1/periods/2026-03/close"), 409)["detail"] == "period 2026-03 is already closed"


def test_the_example_leaves_balanced_verified_books_that_a_replay_does_not_change(northwind):
    call = northwind
    run_the_example(call)
    trial = call.read("/v1/reports/trial-balance?as_of=2026-04-30")
    # 200.00 accrued + 200.00 released + 160.00 paid out + 100.00 settled + 40.00 clawed back
    assert trial["totals"] == [{"currency": "USD", "debit": "700.00", "credit": "700.00"}]
    rows = {row["account"]: row["balance"] for row in trial["rows"]}
    assert rows["expense:commission"] == "160.00"  # 200.00 accrued, 40.00 clawed back
    assert rows["asset:cash"] == "-100.00" and rows["liability:payouts:in_transit"] == "-60.00"
    liabilities = call.read("/v1/reports/liabilities?as_of=2026-04-30")
    assert liabilities["partners"] == [{"partner_id": "northwind", "currency": "USD", "pending": "0.00",
                                        "available": "0.00"}]
    integrity = call.read("/v1/integrity")
    assert integrity["ok"] is True
    events = [event_body("evt-inv-1", "acme", "inv-1", "500.00", "2026-01-20"),
              event_body("evt-inv-2", "acme", "inv-2", "500.00", "2026-02-20"),
              event_body("evt-refund-1", "acme", "inv-1", "200.00", "2026-03-05", kind="refund")]
    results = call.ok("/v1/revenue-events/batch", {"events": events}, as_="billing")["results"]
    assert [(r["id"], r["http_status"], r.get("replayed")) for r in results] == [
        ("evt-inv-1", 201, True), ("evt-inv-2", 201, True), ("evt-refund-1", 201, True)]
    replayed = call.post("/v1/revenue-events", events[0], as_="billing")  # its release names it too
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert expect(replayed, 201) == {"id": "evt-inv-1", "status": "posted", "transaction_ids": [1], "commissions": [
        {"partner_id": "northwind", "kind": "accrual", "amount": money("100.00")}]}
    assert call.ok("/v1/payout-runs", {"at": instant("2026-04-01")})["payouts"][0]["amount"] == money("60.00")
    assert call.read("/v1/integrity")["transactions_checked"] == integrity["transactions_checked"] == 8
