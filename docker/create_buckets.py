"""Create the S3 buckets the demo manifest names (run once by the ``airflow-init`` service).

The buckets are created through the ``aws_default`` Airflow connection, the one backups are
written with, so a stack whose connection does not fit its S3 server fails here, at start,
rather than at the first backup. An existing bucket is kept.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from sensei_airflow.manifest import load_manifests


def buckets(migrations_dir: Path) -> list[str]:
    """The s3:// buckets named by the manifests' backup locations."""
    found = set()
    for manifest in load_manifests(migrations_dir):
        rollback = manifest.rollback
        for location in (rollback.backup_location, rollback.pre_migration_backup.storage):
            if location and location.startswith("s3://"):
                found.add(urlsplit(location).netloc)
    return sorted(found)


def main() -> int:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=os.environ.get("SENSEI_AWS_CONN_ID", "aws_default"))
    for bucket in buckets(Path(os.environ["SENSEI_MIGRATIONS_DIR"])):
        if hook.check_for_bucket(bucket):
            print(f"keeping bucket {bucket}")
            continue
        hook.create_bucket(bucket_name=bucket)
        print(f"created bucket {bucket}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
