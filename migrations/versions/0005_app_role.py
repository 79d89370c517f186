"""PostgreSQL: the application role `revshare_app`, which may read and append but never rewrite.

Migrations run as the owner (REVSHARE_MIGRATION_DATABASE_URL); the service connects as a login
role that is a member of `revshare_app` (REVSHARE_DATABASE_URL). That role gets SELECT and INSERT on
every table, DELETE only on the derived work queue `open_holds`, and no UPDATE, DELETE or TRUNCATE
on journal data: even a compromised service cannot rewrite the books, and the triggers stand
behind the grants. Later migrations grant on the tables they add. SQLite has no roles: nothing to do.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

APP_ROLE = "revshare_app"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"""
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
    CREATE ROLE {APP_ROLE} NOLOGIN;
  END IF;
END $$""")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO {APP_ROLE}")
    op.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}")
    op.execute(f"GRANT DELETE ON open_holds TO {APP_ROLE}")
    op.execute(f"REVOKE ALL ON alembic_version FROM {APP_ROLE}")
    op.execute(f"GRANT SELECT ON alembic_version TO {APP_ROLE}")


def downgrade() -> None:
    raise NotImplementedError("privileges are only ever narrowed by a new migration")
