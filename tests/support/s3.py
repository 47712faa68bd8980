"""moto's standalone S3 server: a real S3 endpoint on a free port, for attachments."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest

from tests.support.procs import free_port

REGION = "us-east-1"
KEYS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}  # moto takes any


@dataclass
class S3:
    """Where the server listens, and a client to put objects there."""

    url: str
    client: object  # a boto3 S3 client bound to ``url``

    def settings(self, buckets: tuple[str, ...] = ("mail",)) -> dict:
        """Config overrides that point the service at this server, allowing ``buckets``:
        make_config(**settings())."""
        return {
            "s3_endpoint_url": self.url,
            "s3_region": REGION,
            "s3_access_key_id": KEYS["aws_access_key_id"],
            "s3_secret_access_key": KEYS["aws_secret_access_key"],
            "s3_allowed_buckets": buckets,
        }

    def put(self, bucket: str, key: str, body: bytes) -> None:
        """Store an object, creating its bucket on first use."""
        errors = self.client.exceptions
        with contextlib.suppress(errors.BucketAlreadyOwnedByYou, errors.BucketAlreadyExists):
            self.client.create_bucket(Bucket=bucket)
        self.client.put_object(Bucket=bucket, Key=key, Body=body)


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server for the whole session; each test puts the objects it needs."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    yield S3(url, boto3.client("s3", endpoint_url=url, region_name=REGION, **KEYS))
    with contextlib.suppress(Exception):
        server.stop()
