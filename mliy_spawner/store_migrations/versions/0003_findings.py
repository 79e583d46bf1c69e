"""The reconcilers' findings: table ``findings``.

Revision ID: 0003
Revises: 0002

A new table only: a database at 0002 keeps its rows. The hub fills it at its next
reconciler cycle.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    # what each hub's reconcilers found in their latest cycle, per region
    op.create_table(
        "findings",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("hub", sa.String(255), nullable=False, index=True),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("stack_id", sa.String(1024), nullable=False),
        sa.Column("stack_name", sa.String(255), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("server_name", sa.String(255), nullable=False),
        sa.Column("reason", sa.String(1024), nullable=False),
        sa.Column("since", sa.DateTime, nullable=True),
        sa.Column("seen", sa.DateTime, nullable=False),
    )


def downgrade():
    op.drop_table("findings")
