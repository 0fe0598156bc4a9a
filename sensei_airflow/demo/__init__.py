"""The demo: a generated shop database migrated from a source to a target PostgreSQL, to roll back."""
