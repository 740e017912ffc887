"""Labelled trees in object storage: found as on local disk."""

from cracknet import storage
from cracknet.data.trees import discover


def test_discover_on_s3(s3_endpoint):
    root = "s3://cracknet-test/discover-tree"
    storage.write_bytes(f"{root}/crack/a b/1.jpg", b"1")
    storage.write_bytes(f"{root}/no_crack/2.jpg", b"2")
    found = sorted((p.uri, p.label) for p in discover(root))
    assert found == [(f"{root}/crack/a b/1.jpg", 1), (f"{root}/no_crack/2.jpg", 0)]
