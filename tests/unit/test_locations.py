"""Locations on their own: URIs refused before any store is asked, and what lies within what, as a read will see it."""

import pytest

from cracknet import storage
from cracknet.errors import CracknetError


def test_s3_uri_without_bucket_is_refused():
    with pytest.raises(CracknetError, match="names no bucket"):
        storage.resolve("s3://")


@pytest.mark.parametrize("uri, root, inside", [
    ("s3://b/in/x.jpg", "s3://b/in", True),
    # S3 keys are literal: a read of "in/a/../x.jpg" fetches that very key, so dot segments are never inside.
    ("s3://b/in/a/../x.jpg", "s3://b/in/", False),
    ("s3://b/private/../survey/x.jpg", "s3://b/survey", False),
    ("s3://b/survey/./x.jpg", "s3://b/survey", False),
    ("s3://b/in/../out/x.jpg", "s3://b/in", False),
    ("s3://b/in2/x.jpg", "s3://b/in", False),
    ("s3://other/in/x.jpg", "s3://b/in", False),
    ("s3://b/anything.jpg", "s3://b", True),
    ("s3://b/in/x.jpg", "s3://b/in/x.jpg", True),
    ("/data/in/x.jpg", "/data/in", True),
    ("/data/in/../out/x.jpg", "/data/in", False),
    ("/data/in2/x.jpg", "/data/in", False),
    ("/data/in/x.jpg", "s3://b/data/in", False),
])
def test_within_judges_the_key_that_will_be_read(uri, root, inside):
    assert storage.within(uri, root) is inside
