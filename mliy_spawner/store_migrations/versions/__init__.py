"""The store's alembic revisions, one file each (see ``mliy_spawner.store_migrations``)."""
