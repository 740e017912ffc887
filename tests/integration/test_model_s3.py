"""Starting weights read from object storage."""

from helpers import assert_backbone_equal

from cracknet import storage
from cracknet.model.network import build_model, load_starting_weights


def test_weights_from_object_storage(imagenet_like_file, s3_endpoint):
    path, state = imagenet_like_file
    uri = "s3://cracknet-test/weights/resnet50.pth"
    storage.write_bytes(uri, path.read_bytes())
    model = build_model()
    load_starting_weights(model, uri)
    assert_backbone_equal(model, state)
