"""Storage backends against real storage: a local folder and a local S3 (moto server)."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from sensei_airflow.backups.files import CorruptBackup, check_file, open_stored, store
from sensei_airflow.backups.storage import (
    FileStorage,
    S3Storage,
    StorageUnreachable,
    storage_for,
)


class Chunks(io.RawIOBase):
    """A readable that produces ``total`` pseudo-random bytes without holding them."""

    def __init__(self, total: int, seed: bytes = b"x") -> None:
        self.left = total
        self.block = hashlib.sha256(seed).digest() * 4096  # 128 KiB, varied enough

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        out = (self.block * (size // len(self.block) + 1))[:size]
        self.left -= size
        return out


def test_scheme_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(storage_for(str(tmp_path)), FileStorage)
    assert isinstance(storage_for(tmp_path.as_uri()), FileStorage)
    assert storage_for(tmp_path.as_uri()).root == tmp_path
    assert isinstance(storage_for("s3://bucket/some/prefix/"), S3Storage)
    assert type(storage_for("gs://bucket/prefix")).__name__ == "GCSStorage"
    with pytest.raises(ValueError, match="ftp"):
        storage_for("ftp://host/x")


def test_file_storage_round_trip_and_atomic_write(backup_dir: Path) -> None:
    storage = storage_for(backup_dir.as_uri())
    storage.check_reachable()
    record = store(storage, "m/bkp_1/data/t.copy.zst", Chunks(3 << 20))
    assert storage.size("m/bkp_1/data/t.copy.zst") == record.size
    assert hashlib.sha256((backup_dir / "m/bkp_1/data/t.copy.zst").read_bytes()).hexdigest() == record.sha256
    with open_stored(storage, "m/bkp_1/data/t.copy.zst", record) as reader:
        assert hashlib.sha256(reader.read()).hexdigest() == hashlib.sha256(Chunks(3 << 20).read()).hexdigest()

    # A writer that fails leaves nothing under the final name, and no partial file.
    with pytest.raises(RuntimeError), storage.open_write("m/bkp_1/broken") as out:
        out.write(b"half")
        raise RuntimeError("disk gone")
    assert storage.list("m") == ["m/bkp_1/data/t.copy.zst"]

    storage.delete(["m/bkp_1/data/t.copy.zst", "m/bkp_1/never_there"])
    assert storage.list("") == []
    assert not (backup_dir / "m").exists()  # emptied folders go too


def test_flipped_byte_is_found(backup_dir: Path) -> None:
    storage = storage_for(str(backup_dir))
    record = store(storage, "f.zst", Chunks(1 << 20))
    assert check_file(storage, "f.zst", record) is None
    path = backup_dir / "f.zst"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    problem = check_file(storage, "f.zst", record)
    assert problem is not None and "corrupted" in problem and "f.zst" in problem
    with pytest.raises(CorruptBackup), open_stored(storage, "f.zst", record) as reader:
        while reader.read(1 << 16):
            pass
    path.unlink()
    assert "missing" in check_file(storage, "f.zst", record)


def test_unreachable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageUnreachable, match="cannot be created"):
        storage_for(str(blocker / "backups")).check_reachable()


def test_s3_multipart_streaming_round_trip(s3_bucket: str) -> None:
    storage = S3Storage(f"s3://{s3_bucket}/pre-migration/", part_size=5 << 20)
    storage.check_reachable()
    client = storage.client
    calls: list[str] = []
    original = client.upload_part

    def counting_upload_part(**kwargs):
        calls.append(kwargs["Key"])
        assert len(kwargs["Body"]) <= 5 << 20  # never more than one part in memory
        return original(**kwargs)

    client.upload_part = counting_upload_part
    total = 12 << 20
    with storage.open_write("m/bkp_2/big.bin") as out:
        source = Chunks(total, b"s3")
        while chunk := source.read(1 << 20):
            out.write(chunk)
    assert calls == ["pre-migration/m/bkp_2/big.bin"] * 3  # 5 + 5 + 2 MiB
    assert storage.size("m/bkp_2/big.bin") == total
    digest = hashlib.sha256()
    with storage.open_read("m/bkp_2/big.bin") as reader:
        while chunk := reader.read(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(Chunks(total, b"s3").read()).hexdigest()

    small = store(storage, "m/bkp_2/small.zst", Chunks(1000))  # one put_object, no multipart
    assert check_file(storage, "m/bkp_2/small.zst", small) is None
    assert storage.list("m/bkp_2") == ["m/bkp_2/big.bin", "m/bkp_2/small.zst"]

    # An upload that fails half-way leaves no object and no pending multipart upload.
    with pytest.raises(RuntimeError), storage.open_write("m/bkp_2/failed.bin") as out:
        out.write(Chunks(6 << 20).read())
        raise RuntimeError("source died")
    assert not storage.exists("m/bkp_2/failed.bin")
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []

    storage.delete(["m/bkp_2/big.bin", "m/bkp_2/small.zst"])
    assert storage.list("m") == []
    with pytest.raises(FileNotFoundError):
        storage.size("m/bkp_2/big.bin")


def test_s3_unreachable(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StorageUnreachable, match="no-such-bucket"):
        storage_for("s3://no-such-bucket/x").check_reachable()
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        '{"conn_type": "aws", "login": "a", "password": "b", '
        '"extra": {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"}}',
    )
    os.environ.pop("AWS_ENDPOINT_URL", None)
    with pytest.raises(StorageUnreachable, match=s3_bucket):
        storage_for(f"s3://{s3_bucket}/x").check_reachable()


def test_gcs_streaming_round_trip(gcs_bucket: str) -> None:
    from sensei_airflow.backups.storage import GCSStorage

    storage = storage_for(f"gs://{gcs_bucket}/pre-migration")
    assert isinstance(storage, GCSStorage)
    storage.check_reachable()
    total = 20 << 20  # more than two resumable-upload chunks
    record = store(storage, "m/bkp_3/t.copy.zst", Chunks(total, b"gcs"), compress=False)
    assert record.size == total == storage.size("m/bkp_3/t.copy.zst")
    assert check_file(storage, "m/bkp_3/t.copy.zst", record) is None
    assert storage.list("m") == ["m/bkp_3/t.copy.zst"]
    storage.delete(["m/bkp_3/t.copy.zst", "m/bkp_3/gone"])
    assert storage.list("") == []
    assert "missing" in check_file(storage, "m/bkp_3/t.copy.zst", record)
    with pytest.raises(StorageUnreachable, match="does not exist"):
        storage_for("gs://no-such-bucket-here/x").check_reachable()
