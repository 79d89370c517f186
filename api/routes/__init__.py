"""The v1 route modules. Each exposes `blp`; `create_app` registers them under `/v1` in this order."""

from __future__ import annotations

from api.routes import health, keys, reports, transactions

BLUEPRINTS = (health.blp, keys.blp, transactions.blp, reports.blp)
