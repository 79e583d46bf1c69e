"""alembic's entry point for the store's migrations (see ``__init__.py``).

Only in-process, online: :func:`mliy_spawner.store_migrations.upgrade` passes the
connection (in ``config.attributes``) inside its transaction. No logging set-up here.
"""

from alembic import context

from mliy_spawner.store import metadata
from mliy_spawner.store_migrations import VERSION_TABLE

connection = context.config.attributes.get("connection")
if context.is_offline_mode() or connection is None:
    raise RuntimeError(
        "the store's migrations run in-process on a connection: call "
        "mliy_spawner.store_migrations.upgrade(connection) (the store does at start-up)"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    # SQLite alters tables by copying them: autogenerate drafts batch operations
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
