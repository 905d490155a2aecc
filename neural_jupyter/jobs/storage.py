"""Where sweep results and trial artifacts are kept: a local directory (default) or S3.

Both implement ``Storage``; anything with the same four methods plugs in.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Protocol

from neural_jupyter.errors import ConfigurationError, MissingDependencyError, PlatformAuthError


class Storage(Protocol):
    def put_file(self, key: str, path: Path) -> str: ...

    def put_json(self, key: str, value: Any) -> str: ...

    def get_json(self, key: str) -> Any: ...

    def list(self, prefix: str = "") -> list[str]: ...


def _clean(key: str) -> str:
    parts = [p for p in key.replace("\\", "/").split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ConfigurationError(f"storage keys may not contain '.' or '..': {key!r}")
    return "/".join(parts)


class LocalStorage:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def _path(self, key: str) -> Path:
        return self.root / _clean(key)

    def put_file(self, key: str, path: Path) -> str:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        return str(target)

    def put_json(self, key: str, value: Any) -> str:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_suffix(target.suffix + ".tmp")
        temporary.write_text(json.dumps(value, indent=2, default=str))
        temporary.replace(target)
        return str(target)

    def get_json(self, key: str) -> Any:
        path = self._path(key)
        return json.loads(path.read_text()) if path.exists() else None

    def list(self, prefix: str = "") -> list[str]:
        base = self.root
        if not base.exists():
            return []
        keys = [str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()]
        return sorted(k for k in keys if k.startswith(_clean(prefix)))

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"


class S3Storage:
    """``s3://bucket/prefix`` through boto3 (its own credential chain)."""

    def __init__(self, url: str, client: Any = None) -> None:
        if not url.startswith("s3://"):
            raise ConfigurationError(f"S3 storage needs an s3://bucket/prefix URL, got {url!r}")
        bucket, _, prefix = url[5:].partition("/")
        if not bucket:
            raise ConfigurationError(f"no bucket in {url!r}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import boto3
            except ImportError:
                raise MissingDependencyError("boto3", "sagemaker", "S3 storage") from None
            self._client = boto3.client("s3")
        return self._client

    def check(self) -> None:
        """Refuse now, before any trial runs, when boto3 finds no AWS credentials."""
        if self._client is not None:  # a client was given: its owner chose its credentials
            return
        try:
            import boto3
        except ImportError:
            raise MissingDependencyError("boto3", "sagemaker", "S3 storage") from None
        if boto3.Session().get_credentials() is None:
            raise PlatformAuthError(
                f"--storage {self.url} needs AWS credentials, and boto3 found none",
                platform="s3",
                hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE (or run "
                "'aws configure'), or give --storage a local directory",
            )

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return "/".join(p for p in (self.prefix, _clean(key)) if p)

    def put_file(self, key: str, path: Path) -> str:
        self.client.upload_file(str(path), self.bucket, self._key(key))
        return f"s3://{self.bucket}/{self._key(key)}"

    def put_json(self, key: str, value: Any) -> str:
        body = json.dumps(value, indent=2, default=str).encode()
        self.client.put_object(
            Bucket=self.bucket, Key=self._key(key), Body=body, ContentType="application/json"
        )
        return f"s3://{self.bucket}/{self._key(key)}"

    def get_json(self, key: str) -> Any:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey:
            return None
        return json.loads(response["Body"].read())

    def list(self, prefix: str = "") -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        full = self._key(prefix) if prefix else self.prefix
        keys = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for item in page.get("Contents", []):
                key = item["Key"]
                keys.append(key[len(self.prefix) + 1 :] if self.prefix else key)
        return sorted(keys)

    def __repr__(self) -> str:
        return f"S3Storage('s3://{self.bucket}/{self.prefix}')"


def storage_for(spec: str | Storage | None) -> Storage:
    """``None`` → the local sweeps directory; ``s3://...`` → S3; a path → that directory."""
    if spec is None:
        from neural_jupyter.paths import home

        return LocalStorage(home() / "sweeps")
    if not isinstance(spec, str):
        return spec
    return S3Storage(spec) if spec.startswith("s3://") else LocalStorage(spec)
