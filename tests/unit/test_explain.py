"""Grad-CAM: the heat lands on the crack, and `cracknet explain` writes a PNG overlay."""

import numpy as np
import pytest
import torch
from conftest import model_card
from PIL import Image, ImageDraw

from cracknet.cli import main as cli_main
from cracknet.demo.synthetic import concrete, draw_crack, image_bytes
from cracknet.images.decoding import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, eval_preset
from cracknet.model.network import build_model, save_artifact
from cracknet.predict.explain import explain, grad_cam, upsample
from cracknet.predict.scorer import Scorer

SIZE = 192
CELL = 32  # input pixels per cell of layer4's map
SPEC = Preprocessing(image_size=SIZE, mean=tuple(IMAGENET_MEAN), std=tuple(IMAGENET_STD))


@pytest.fixture(scope="module")
def crack_model(tmp_path_factory):
    """A ResNet50 that has learnt generated cracks at the stage Grad-CAM looks at.

    Layers 1-3 keep their random weights (batch-norm statistics taken from the images), so their output
    is computed once; layer4 and the head then train on it for a few epochs, which takes well under a
    minute on a CPU where training the whole network would take hours. Grad-CAM only reads layer4 and
    the head, so this is the part whose learning the test must see.
    """
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_model()
    images, labels = [], []
    for i in range(240):
        img = concrete(rng, SIZE)
        if i % 2:
            draw_crack(img, rng)
        images.append(np.asarray(img))
        labels.append(i % 2)
    x = eval_preset(torch.from_numpy(np.stack(images)), SPEC)
    y = torch.tensor(labels, dtype=torch.float32)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batches below
    stem = torch.nn.Sequential(*list(model.children())[:-3])  # conv1 .. layer3
    fast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=torch.ops.mkldnn._is_mkldnn_bf16_supported())
    with torch.no_grad(), fast:
        model.train()
        for i in range(0, len(x), 40):
            model(x[i:i + 40])
        model.eval()
        features = torch.cat([stem(x[i:i + 40]).float() for i in range(0, len(x), 40)])
    top = torch.nn.Sequential(model.layer4, model.avgpool, torch.nn.Flatten(), model.fc).train()
    optimizer = torch.optim.AdamW(top.parameters(), lr=3e-4, weight_decay=0.01)
    for _ in range(8):
        for batch in torch.randperm(len(features)).split(24):
            optimizer.zero_grad()
            with fast:
                logits = top(features[batch])[:, 0].float()
            torch.nn.functional.binary_cross_entropy_with_logits(logits, y[batch]).backward()
            optimizer.step()
    model.eval()
    folder = tmp_path_factory.mktemp("cam-model") / "model"
    save_artifact(str(folder), model.state_dict(), model_card(image_size=SIZE, source_size=SIZE))
    return folder


def near(points, width: int) -> np.ndarray:
    """Pixels within width/2 of a polyline."""
    mask = Image.new("L", (SIZE, SIZE))
    ImageDraw.Draw(mask).line(points, fill=255, width=width, joint="curve")
    return np.asarray(mask) > 0


def test_most_heat_falls_on_the_crack(crack_model, tmp_path):
    """layer4 sees the image in 32-pixel cells, so "on the crack" means within one cell of its pixels."""
    rng = np.random.default_rng(1)
    scorer = Scorer.load(str(crack_model))  # loaded once for the twelve images
    on_crack, on_mirror = [], []
    for k in range(12):
        img = concrete(rng, SIZE)
        points = draw_crack(img, rng)
        path = tmp_path / f"crack-{k}.png"
        img.save(path)
        result = explain(scorer, str(path), str(tmp_path / f"cam-{k}.png"))
        if result["crack_probability"] < 0.5:
            continue
        heat = upsample(result["cam"], (SIZE, SIZE))
        crack = near(points, 2 * CELL)
        # The same band where no crack is (the crack mirrored left-right) as a control.
        mirror = near([(SIZE - px, py) for px, py in points], 2 * CELL) & ~crack
        on_crack.append(heat[crack].sum() / heat.sum())
        on_mirror.append(heat[mirror].sum() / max(mirror.sum(), 1) * crack.sum() / heat.sum())
    assert len(on_crack) >= 9, "the model should call most of these cracks"
    on_crack, on_mirror = np.array(on_crack), np.array(on_mirror)
    assert np.median(on_crack) > 0.6 and (on_crack > 0.5).mean() >= 0.75, np.round(on_crack, 2)
    assert np.median(on_mirror) < 0.5 * np.median(on_crack), np.round(on_mirror, 2)


def test_grad_cam_is_the_positive_part_of_the_gradient_weighted_last_stage():
    torch.manual_seed(0)
    model = build_model().eval()
    x = torch.randn(1, 3, 64, 64)
    probability, cam = grad_cam(model, x)
    features = {}
    model.layer4.register_forward_hook(lambda m, i, o: features.update(a=o))
    logit = model(x)[0, 0]
    grad, = torch.autograd.grad(logit, features["a"])
    expected = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * features["a"]).sum(1))[0].detach().numpy()
    assert probability == pytest.approx(torch.sigmoid(logit).item(), abs=1e-6)
    assert expected.max() > 0  # this seed gives a map with heat in it, so the comparison below always runs
    np.testing.assert_allclose(cam, expected / expected.max(), atol=1e-5)


def test_explain_command_writes_a_png_overlay_and_refuses_a_broken_image(crack_model, tmp_path, capsys):
    rng = np.random.default_rng(2)
    img = concrete(rng, 300)
    draw_crack(img, rng)
    (tmp_path / "photo.jpg").write_bytes(image_bytes(img))
    out = tmp_path / "out" / "photo-cam.png"
    assert cli_main(["explain", "--model", str(crack_model), str(tmp_path / "photo.jpg"), "--out", str(out)]) == 0
    assert "Grad-CAM overlay written to" in capsys.readouterr().out
    with Image.open(out) as written:
        assert written.format == "PNG" and written.size == (300, 300)
        assert np.asarray(written).std() > 0
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert cli_main(["explain", "--model", str(crack_model), str(tmp_path / "broken.jpg"), "--out",
                     str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cracknet: error: ") and "broken.jpg" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.png").exists()
