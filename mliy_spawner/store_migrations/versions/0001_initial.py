"""The store's schema before versioning: instances, progress, bootstrap_codes.

Revision ID: 0001
Revises: (none)

The tables exactly as the releases before alembic created them (``metadata.create_all``
at commit f362d74). A database those releases made already has them and no version
table: each table that exists is kept as it is, with its rows, and only missing ones are
created (the releases before the bootstrap codes had no ``bootstrap_codes``). Column
defaults are applied by the store's code, not the database, as before.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _instances():
    return [
        sa.Column("instance_id", sa.String(64), primary_key=True),
        sa.Column("user", sa.String(255), nullable=False, index=True),
        sa.Column("server_name", sa.String(255), nullable=False),
        sa.Column("stack_id", sa.String(1024), nullable=False),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("updated", sa.DateTime, nullable=False),
    ]


def _progress():
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("instance_id", sa.String(64), nullable=False, index=True),
        sa.Column("step", sa.String(200), nullable=False),
        sa.Column("percent", sa.Integer, nullable=False),
        sa.Column("failed", sa.Boolean, nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
    ]


def _bootstrap_codes():
    return [
        sa.Column("code_id", sa.String(64), primary_key=True),
        sa.Column("user", sa.String(255), nullable=False, index=True),
        sa.Column("server_name", sa.String(255), nullable=False),
        sa.Column("instance_id", sa.String(64), nullable=True),
        sa.Column("private_ip", sa.String(64), nullable=True),
        sa.Column("sealed_token", sa.String(4096), nullable=False),
        sa.Column("expires", sa.DateTime, nullable=False),
        sa.Column("used", sa.DateTime, nullable=True),
        sa.Column("refused", sa.String(255), nullable=True),
    ]


TABLES = {
    "instances": _instances,
    "progress": _progress,
    "bootstrap_codes": _bootstrap_codes,
}


def upgrade():
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    for name, columns in TABLES.items():
        if name not in existing:
            op.create_table(name, *columns())


def downgrade():
    for name in reversed(TABLES):
        op.drop_table(name)
