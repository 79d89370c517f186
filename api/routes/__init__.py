"""The v1 route modules. Each exposes `blp`; `create_app` registers them under `/v1` in this order."""

from __future__ import annotations

from api.routes import customers, health, keys, partners, payouts, periods, plans, reports, revenue, transactions

BLUEPRINTS = (health.blp, keys.blp, plans.blp, partners.blp, customers.blp, revenue.blp, transactions.blp,
              payouts.blp, periods.blp, reports.blp)
