"""Storage on local disk and on a real S3-compatible endpoint (moto server over HTTP)."""

import pytest
from conftest import BUCKET

from cracknet import storage
from cracknet.storage import objects
from cracknet.errors import CracknetError


def test_write_read_list_delete(store_root):
    storage.write_bytes(storage.join(store_root, "a", "one.bin"), b"1")
    storage.write_bytes(storage.join(store_root, "a", "b", "two.bin"), b"22")
    assert storage.read_bytes(storage.join(store_root, "a", "b", "two.bin")) == b"22"
    assert storage.list_files(store_root) == [storage.join(store_root, "a", "b", "two.bin"),
                                              storage.join(store_root, "a", "one.bin")]
    assert storage.exists(storage.join(store_root, "a")) and not storage.exists(storage.join(store_root, "zzz"))
    storage.delete_tree(storage.join(store_root, "a"))
    assert not storage.exists(storage.join(store_root, "a", "one.bin"))


def test_a_listing_streams_in_pages_with_the_version_a_read_sees(store_root):
    names = [f"s/{i}.jpg" for i in range(5)]
    for name in names:
        storage.write_bytes(storage.join(store_root, *name.split("/")), name.encode())
    pages = list(storage.iter_versions(store_root, page=2))
    assert [len(p) for p in pages] == [2, 2, 1]
    listed = dict(pair for page in pages for pair in page)
    assert sorted(listed) == sorted(storage.join(store_root, *n.split("/")) for n in names)
    for uri, version in listed.items():
        assert storage.read_versioned(uri)[1] == version
    with pytest.raises(CracknetError, match="does not exist"):
        next(storage.iter_versions(storage.join(store_root, "nowhere") if not storage.is_s3(store_root)
                                   else "s3://no-such-bucket-here/x"))


def test_missing_objects_and_buckets_are_sentences(store_root, s3_endpoint):
    with pytest.raises(CracknetError, match="does not exist"):
        storage.read_bytes(storage.join(store_root, "missing.bin"))
    with pytest.raises(CracknetError, match="does not exist"):
        storage.list_files("s3://no-such-bucket-here/prefix")


def test_an_output_in_a_missing_bucket_is_refused_up_front(s3_endpoint, tmp_path):
    storage.require_bucket(f"s3://{BUCKET}/results")
    storage.require_bucket(str(tmp_path / "not-yet-made"))
    with pytest.raises(CracknetError) as info:
        storage.require_bucket("s3://no-such-bucket-here/results")
    assert str(info.value) == ("The bucket 'no-such-bucket-here' of s3://no-such-bucket-here/results does not exist; "
                               "create it or fix the URI.")


def test_refused_credentials_are_one_line(strict_s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", strict_s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    with pytest.raises(CracknetError) as info:
        storage.list_files("s3://any-bucket/prefix")
    message = str(info.value)
    assert "\n" not in message and "s3://any-bucket/prefix" in message and "refused the credentials" in message
    assert "AKIAUNKNOWNKEY000001" not in message and "not-a-real-secret" not in message
    with pytest.raises(CracknetError, match="refused the credentials") as info:
        storage.require_bucket("s3://any-bucket/results")
    assert "\n" not in str(info.value) and "not-a-real-secret" not in str(info.value)


def test_attempts_per_request_follow_aws_max_attempts(s3_endpoint, monkeypatch):
    assert storage.s3_client().meta.config.retries["total_max_attempts"] == 6
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    assert storage.s3_client().meta.config.retries["total_max_attempts"] == 2
    storage.write_bytes(f"s3://{BUCKET}/attempts/x", b"1")  # the store still works with fewer attempts
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "many")
    with pytest.raises(CracknetError, match="AWS_MAX_ATTEMPTS must be a whole number of at least 1, got 'many'"):
        storage.read_bytes(f"s3://{BUCKET}/attempts/x")


def test_a_bug_is_not_retried_nor_reported_as_an_unavailable_store(s3_endpoint, monkeypatch):
    """Only the store's answers and network failures count as the store's: a plain bug surfaces as itself."""
    uri = f"s3://{BUCKET}/storage-test/bug.bin"
    storage.write_bytes(uri, b"x")
    calls = []

    class Buggy:
        def get_object(self, **kwargs):
            calls.append(kwargs)
            raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

        def put_object(self, **kwargs):
            raise KeyError("Body")

    monkeypatch.setattr(objects, "s3_client", lambda: Buggy())
    with pytest.raises(TypeError):
        storage.read_versioned(uri)
    assert len(calls) == 1
    with pytest.raises(KeyError):
        storage.write_bytes(uri, b"y")
    from botocore.exceptions import EndpointConnectionError

    assert objects._transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert not objects._transient(ValueError("a bug"))
