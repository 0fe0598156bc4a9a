"""Where backup files live: a local folder, S3 or Google Cloud Storage, chosen by the location's scheme.

Every backend streams: writers take bounded chunks (S3 uploads them as multipart parts, GCS
as resumable-upload chunks, a folder appends to a ``.part`` file renamed on success), readers
hand out chunks. No backend ever holds a whole backup file in memory. A file appears under its
final name only once it is complete.

``file:///var/backups/``, ``/var/backups`` (plain path), ``s3://bucket/prefix/`` and
``gs://bucket/prefix/`` are accepted. S3 goes through the amazon provider's ``S3Hook``
(connection ``[sensei] aws_conn_id``, default ``aws_default``), GCS through the google
provider's ``GCSHook`` (``[sensei] gcp_conn_id``, default ``google_cloud_default``).
"""

from __future__ import annotations

import io
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote, urlparse

from sensei_airflow.extras import missing_extra

#: read and write chunk size of every backend.
CHUNK = 1 << 20
#: S3 multipart part size (S3 needs at least 5 MiB for every part but the last).
S3_PART_SIZE = 16 << 20


class StorageUnreachable(RuntimeError):
    """The backup location cannot be reached (missing folder or bucket, refused credentials, network)."""


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


def _config(key: str, fallback: str) -> str:
    from airflow.sdk import conf

    return conf.get("sensei", key, fallback=fallback) or fallback


class Storage(ABC):
    """A backup location; file names are relative paths below it (``mig/bkp_x/data.zst``)."""

    scheme: str

    def __init__(self, url: str) -> None:
        self.url = url

    def url_of(self, name: str) -> str:
        return f"{self.url.rstrip('/')}/{name}"

    @abstractmethod
    def check_reachable(self) -> None:
        """Raise :class:`StorageUnreachable` when the location cannot be used."""

    @abstractmethod
    def open_write(self, name: str) -> Any:
        """A context manager giving a writable; the file exists under ``name`` only after a clean exit."""

    @abstractmethod
    def open_read(self, name: str) -> Any:
        """A context manager giving a readable of the file (``FileNotFoundError`` if it is not there)."""

    @abstractmethod
    def size(self, name: str) -> int:
        """Size of the file in bytes (``FileNotFoundError`` if it is not there)."""

    @abstractmethod
    def delete(self, names: list[str]) -> None:
        """Delete files; names already gone are fine (pruning is retried)."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Names below a prefix."""

    def discard(self) -> None:
        """Remove the location itself once it is empty (object stores have no folders: nothing to do)."""
        return None

    def exists(self, name: str) -> bool:
        try:
            self.size(name)
        except FileNotFoundError:
            return False
        return True

    def upload(self, name: str, source: Readable) -> int:
        """Stream a readable into a file; returns the bytes written."""
        written = 0
        with self.open_write(name) as out:
            while chunk := source.read(CHUNK):
                out.write(chunk)
                written += len(chunk)
        return written


def storage_for(location: str) -> Storage:
    """The backend for a location, by its scheme.

    :raises ValueError: for a scheme that is not supported.
    """
    parsed = urlparse(location)
    if parsed.scheme == "s3":
        return S3Storage(location)
    if parsed.scheme == "gs":
        return GCSStorage(location)
    if parsed.scheme in ("file", ""):
        return FileStorage(location)
    raise ValueError(
        f"backup location {location!r}: scheme {parsed.scheme!r} is not supported (use s3://, gs://, "
        "file:// or a local path)"
    )


# -- local folder ----------------------------------------------------------------------------
class FileStorage(Storage):
    scheme = "file"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parsed = urlparse(url)
        self.root = Path(unquote(parsed.path) if parsed.scheme == "file" else url).expanduser()

    def _path(self, name: str) -> Path:
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"backup file name {name!r} leaves the backup location")
        return path

    def check_reachable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnreachable(f"backup folder {self.root} cannot be created: {exc}") from None
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            raise StorageUnreachable(f"backup folder {self.root} is not readable and writable")

    @contextmanager
    def open_write(self, name: str) -> Iterator[BinaryIO]:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        try:
            with open(partial, "wb") as out:
                yield out
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)

    @contextmanager
    def open_read(self, name: str) -> Iterator[BinaryIO]:
        with open(self._path(name), "rb") as source:
            yield source

    def size(self, name: str) -> int:
        return self._path(name).stat().st_size

    def delete(self, names: list[str]) -> None:
        folders = set()
        for name in names:
            path = self._path(name)
            path.unlink(missing_ok=True)
            folders.add(path.parent)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            while folder != self.root.resolve() and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        root = self.root.resolve()
        return sorted(str(p.relative_to(root)) for p in base.rglob("*") if p.is_file())

    def discard(self) -> None:
        if self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()


# -- S3 ------------------------------------------------------------------------------------------
def _bucket_and_prefix(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    if not parsed.netloc:
        raise ValueError(f"backup location {url!r} names no bucket")
    return parsed.netloc, parsed.path.strip("/")


class _S3MultipartWriter(io.RawIOBase):
    """Buffers up to one part, uploads full parts as they come; one ``put_object`` if the file is small."""

    def __init__(self, client: Any, bucket: str, key: str, part_size: int) -> None:
        super().__init__()
        self.client, self.bucket, self.key, self.part_size = client, bucket, key, part_size
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.buffer += data
        while len(self.buffer) >= self.part_size:
            self._upload_part(bytes(self.buffer[: self.part_size]))
            del self.buffer[: self.part_size]
        return len(data)

    def _upload_part(self, body: bytes) -> None:
        if self.upload_id is None:
            self.upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key)["UploadId"]
        number = len(self.parts) + 1
        answer = self.client.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=body
        )
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def finish(self) -> None:
        if self.upload_id is None:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self.buffer))
            return
        if self.buffer:
            self._upload_part(bytes(self.buffer))
        self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts}
        )

    def abort(self) -> None:
        if self.upload_id is not None:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)


class S3Storage(Storage):
    scheme = "s3"

    def __init__(self, url: str, aws_conn_id: str | None = None, part_size: int = S3_PART_SIZE) -> None:
        super().__init__(url)
        self.bucket, self.prefix = _bucket_and_prefix(url)
        self.aws_conn_id = aws_conn_id
        self.part_size = part_size

    @cached_property
    def hook(self) -> Any:
        try:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        except ImportError as exc:
            raise missing_extra("amazon", "Amazon", "s3:// backup locations") from exc
        return S3Hook(aws_conn_id=self.aws_conn_id or _config("aws_conn_id", "aws_default"))

    @cached_property
    def client(self) -> Any:
        return self.hook.get_conn()

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def check_reachable(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise StorageUnreachable(f"S3 bucket {self.bucket} cannot be reached: {exc}") from None

    @contextmanager
    def open_write(self, name: str) -> Iterator[_S3MultipartWriter]:
        writer = _S3MultipartWriter(self.client, self.bucket, self._key(name), self.part_size)
        try:
            yield writer
            writer.finish()
        except BaseException:
            writer.abort()
            raise

    @contextmanager
    def open_read(self, name: str) -> Iterator[Any]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"]
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(self.url_of(name)) from None
        try:
            yield body
        finally:
            body.close()

    def size(self, name: str) -> int:
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(name))["ContentLength"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(self.url_of(name)) from None
            raise

    def delete(self, names: list[str]) -> None:
        for start in range(0, len(names), 1000):
            batch = [{"Key": self._key(n)} for n in names[start : start + 1000]]
            if batch:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def list(self, prefix: str) -> list[str]:
        strip = f"{self.prefix}/" if self.prefix else ""
        names: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(prefix)
        ):
            names.extend(item["Key"][len(strip) :] for item in page.get("Contents", []))
        return sorted(names)


# -- Google Cloud Storage ------------------------------------------------------------------------
class GCSStorage(Storage):
    scheme = "gs"

    def __init__(self, url: str, gcp_conn_id: str | None = None) -> None:
        super().__init__(url)
        self.bucket_name, self.prefix = _bucket_and_prefix(url)
        self.gcp_conn_id = gcp_conn_id

    @cached_property
    def hook(self) -> Any:
        try:
            from airflow.providers.google.cloud.hooks.gcs import GCSHook
        except ImportError as exc:
            raise missing_extra("google", "Google", "gs:// backup locations") from exc
        return GCSHook(gcp_conn_id=self.gcp_conn_id or _config("gcp_conn_id", "google_cloud_default"))

    @cached_property
    def bucket(self) -> Any:
        return self.hook.get_conn().bucket(self.bucket_name)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def check_reachable(self) -> None:
        try:
            found = self.bucket.exists()
        except Exception as exc:
            raise StorageUnreachable(f"GCS bucket {self.bucket_name} cannot be reached: {exc}") from None
        if not found:
            raise StorageUnreachable(f"GCS bucket {self.bucket_name} does not exist")

    @contextmanager
    def open_write(self, name: str) -> Iterator[Any]:
        # A resumable upload in CHUNK-multiple pieces; the object appears only when it is closed.
        with self.bucket.blob(self._key(name), chunk_size=8 * CHUNK).open("wb", ignore_flush=True) as out:
            yield out

    @contextmanager
    def open_read(self, name: str) -> Iterator[Any]:
        # get_blob answers None for a missing object (blob.open would only fail on the first read).
        blob = self.bucket.get_blob(self._key(name))
        if blob is None:
            raise FileNotFoundError(self.url_of(name))
        with blob.open("rb", chunk_size=8 * CHUNK) as reader:
            yield reader

    def size(self, name: str) -> int:
        blob = self.bucket.get_blob(self._key(name))
        if blob is None:
            raise FileNotFoundError(self.url_of(name))
        return int(blob.size)

    def delete(self, names: list[str]) -> None:
        from google.api_core.exceptions import NotFound

        for name in names:
            with suppress(NotFound):
                self.bucket.blob(self._key(name)).delete()

    def list(self, prefix: str) -> list[str]:
        strip = f"{self.prefix}/" if self.prefix else ""
        client = self.hook.get_conn()
        return sorted(
            b.name[len(strip) :] for b in client.list_blobs(self.bucket_name, prefix=self._key(prefix))
        )
