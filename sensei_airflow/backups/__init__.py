"""Backups: the catalog in the state store, storage backends, logical and physical backups.

- :mod:`~sensei_airflow.backups.catalog`: ``sensei.backups``, one entry per backup.
- :mod:`~sensei_airflow.backups.storage`: local folder, ``s3://``, ``gs://``.
- :mod:`~sensei_airflow.backups.logical`: per-table data and definitions.
- :mod:`~sensei_airflow.backups.physical`: base backups of a whole cluster (shared with PITR).
- :mod:`~sensei_airflow.backups.jobs`: what the backup tasks do per migration manifest.
"""
