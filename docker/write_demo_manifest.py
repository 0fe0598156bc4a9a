"""Write the demo manifest of the compose stack (run once by the ``airflow-init`` service).

``started_at`` is the moment the stack was first initialised, so the rollback window opens
then; an existing manifest is kept, so restarting the stack does not move it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from sensei_airflow.demo import shop


def main() -> int:
    folder = Path(os.environ["SENSEI_MIGRATIONS_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{shop.DEMO_MIGRATION_ID}.yaml"
    if path.exists():
        print(f"keeping {path}")
        return 0
    manifest = shop.manifest(backup_location="s3://sensei-backups/")
    rollback = manifest["rollback"]
    rollback["fallback_strategy"] = "backup_restore"
    rollback["backup_before_start"] = True
    rollback["pre_migration_backup"] = {
        "enabled": True,
        "type": "logical",
        "storage": "s3://sensei-backups/pre-migration/",
        "retention_days": 7,
    }
    rollback["point_in_time"] = {
        "postgres": {"wal_archive": "/wal_archive", "base_backups": "/base_backups", "scratch_dir": "/tmp"}
    }
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
