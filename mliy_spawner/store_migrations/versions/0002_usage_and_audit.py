"""The usage ledger and the audit trail: tables ``usage`` and ``audit``.

Revision ID: 0002
Revises: 0001

New tables only: a database at 0001 keeps its rows. Column defaults are applied by the
store's code, not the database.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    # one row per instance per state over time; money as decimal text
    op.create_table(
        "usage",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("hub", sa.String(255), nullable=False),
        sa.Column("user", sa.String(255), nullable=False, index=True),
        sa.Column("server_name", sa.String(255), nullable=False),
        sa.Column("launch_group", sa.String(255), nullable=False, index=True),
        sa.Column("software_config", sa.String(255), nullable=False),
        sa.Column("instance_id", sa.String(64), nullable=False, index=True),
        sa.Column("instance_type", sa.String(64), nullable=False),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("start", sa.DateTime, nullable=False, index=True),
        sa.Column("end", sa.DateTime, nullable=True, index=True),
        sa.Column("hourly_usd", sa.String(32), nullable=True),
        sa.Column("volume_gib", sa.Integer, nullable=True),
        sa.Column("gib_month_usd", sa.String(32), nullable=True),
    )
    # who did what to which server, and why
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime, nullable=False, index=True),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("actor_kind", sa.String(32), nullable=False),
        sa.Column("path", sa.String(32), nullable=False),
        sa.Column("action", sa.String(64), nullable=False, index=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(1024), nullable=False),
        sa.Column("user", sa.String(255), nullable=False, index=True),
        sa.Column("server_name", sa.String(255), nullable=False),
        sa.Column("stack_id", sa.String(1024), nullable=False),
        sa.Column("instance_id", sa.String(64), nullable=False),
    )


def downgrade():
    op.drop_table("audit")
    op.drop_table("usage")
