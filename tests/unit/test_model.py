"""Model construction, starting weights from every source, and the artifact format."""

import json
import os

import pytest
import torch
import torchvision
from conftest import model_card
from helpers import assert_backbone_equal

from cracknet.errors import CracknetError
from cracknet.model.card import model_folder, model_identity, record_evaluations
from cracknet.model.network import build_model, load_artifact, load_starting_weights, read_card, save_artifact
from cracknet.train.checkpoint import read_state as read_checkpoint_state


def test_model_gives_one_logit_per_image():
    assert build_model().eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 1)


def test_weights_from_a_file_load_the_backbone_and_keep_the_new_head(imagenet_like_file):
    path, state = imagenet_like_file
    model = build_model()
    load_starting_weights(model, str(path))
    assert_backbone_equal(model, state)
    assert model.fc.out_features == 1


def test_imagenet_weights_come_through_torchvisions_cache(imagenet_like_file, tmp_path, monkeypatch):
    path, state = imagenet_like_file
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / os.path.basename(url)).write_bytes(path.read_bytes())
    model = build_model()
    load_starting_weights(model, "imagenet")
    assert_backbone_equal(model, state)


def test_imagenet_weights_offline_fail_with_one_clear_line(tmp_path, monkeypatch):
    # An empty cache and a proxy on a closed localhost port: the download fails at once, offline.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    with pytest.raises(CracknetError, match="--weights none") as info:
        load_starting_weights(build_model(), "imagenet")
    assert "\n" not in str(info.value)


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_payload_is_refused_without_running(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "x": Payload(str(marker))}, path)
    with pytest.raises(CracknetError, match="Refusing to load"):
        load_starting_weights(build_model(), str(path))
    assert not marker.exists()


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(p.with_name("good.pt").read_bytes()[:5000]), "not a readable PyTorch weights file"),
    (lambda p: torch.save(torchvision.models.resnet18().state_dict(), p), "not a ResNet50 state dict"),
    (lambda p: torch.save([1, 2, 3], p), "does not hold a state dict"),
    (lambda p: None, "does not exist"),
])
def test_bad_weights_files_give_clear_errors(tmp_path, make, message):
    torch.save(build_model().state_dict(), tmp_path / "good.pt")
    path = tmp_path / "bad.pt"
    make(path)
    with pytest.raises(CracknetError, match=message):
        load_starting_weights(build_model(), str(path))


def test_artifact_round_trip_and_damage_detection(tmp_path):
    model = build_model().eval()
    folder = str(tmp_path / "run" / "model")
    card = save_artifact(folder, model.state_dict(), model_card())
    assert model_folder(str(tmp_path / "run")) == folder
    loaded, read = load_artifact(str(tmp_path / "run"))
    assert read["model_id"] == card["model_id"] == model_identity(card)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    assert load_artifact(folder, model_id=card["model_id"])[1]["model_id"] == card["model_id"]
    with pytest.raises(CracknetError, match=f"is now {card['model_id']}, not the 0123456789abcdef this run"):
        load_artifact(folder, model_id="0123456789abcdef")  # a run pinned to a model replaced since
    # The weights load with weights_only=True: no arbitrary object is unpickled.
    torch.load(os.path.join(folder, "weights.pt"), weights_only=True)

    damaged = bytearray(open(os.path.join(folder, "weights.pt"), "rb").read())
    damaged[-100] ^= 0xFF
    open(os.path.join(folder, "weights.pt"), "wb").write(bytes(damaged))
    with pytest.raises(CracknetError, match="does not match the hash"):
        load_artifact(folder)


def test_a_card_edited_after_saving_keeps_no_id(tmp_path):
    """The id stands for what decides the verdicts: an edited threshold or preprocessing is refused on load."""
    folder, state = str(tmp_path / "model"), build_model().state_dict()
    card = save_artifact(folder, state, model_card(threshold=0.5))
    assert card["model_id"] != card["weights_sha256"][:16]  # the weights alone do not make the id
    edits = {"threshold": 0.2, "preprocessing": {**card["preprocessing"], "image_size": 64}}
    for field, value in edits.items():
        edited = {**json.loads(open(os.path.join(folder, "model.json")).read()), field: value}
        open(os.path.join(folder, "model.json"), "w").write(json.dumps(edited))
        with pytest.raises(CracknetError, match="the card was edited after the model was saved"):
            load_artifact(folder)
    # Saved again, it is a new model with an id of its own; evaluations recorded later do not change it.
    again = save_artifact(folder, state, model_card(threshold=0.2))
    assert again["weights_sha256"] == card["weights_sha256"]
    assert again["model_id"] != card["model_id"]
    record_evaluations(folder, {"asphalt": {"data": "x", "images": 1, "cracks": 0}})
    assert load_artifact(folder)[1]["model_id"] == again["model_id"]


def test_weights_without_a_card_are_not_a_model(tmp_path):
    torch.save(build_model().state_dict(), tmp_path / "weights.pt")
    with pytest.raises(CracknetError, match="holds no finished model"):
        read_card(str(tmp_path))
    (tmp_path / "model.json").write_text(json.dumps({"architecture": "vit"}))
    with pytest.raises(CracknetError, match="'vit' model"):
        read_card(str(tmp_path))


def test_a_pickled_checkpoint_is_refused_without_running(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "state.pt"
    torch.save({"model": build_model().state_dict(), "epoch": 1, "extra": Payload(str(marker))}, path)
    with pytest.raises(CracknetError, match="Refusing to resume from .* could run code"):
        read_checkpoint_state(str(path))
    assert not marker.exists()
    path.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(CracknetError, match="is damaged"):
        read_checkpoint_state(str(path))
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(CracknetError, match="not a cracknet training checkpoint"):
        read_checkpoint_state(str(path))


def test_a_model_artifact_whose_weights_hide_a_payload_is_refused(tmp_path):
    """Even with a card whose hash matches (someone rewrote both), the payload never runs."""
    import hashlib

    marker = tmp_path / "payload-ran"
    folder = tmp_path / "model"
    save_artifact(str(folder), build_model().state_dict(), model_card())
    evil = folder / "weights.pt"
    torch.save({**build_model().state_dict(), "x": Payload(str(marker))}, evil)
    card = json.loads((folder / "model.json").read_text())
    card["weights_sha256"] = hashlib.sha256(evil.read_bytes()).hexdigest()
    card["model_id"] = model_identity(card)
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(CracknetError, match="Refusing to load"):
        load_artifact(str(folder))
    assert not marker.exists()
