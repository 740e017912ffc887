"""Grad-CAM: the heat lands on the crack, and `cracknet explain` writes a PNG overlay."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from cracknet.cli import main as cli_main
from cracknet.explain import explain, grad_cam
from cracknet.model import build_model, save_artifact
from cracknet.synthetic import concrete, draw_crack, image_bytes
from cracknet.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, eval_preset

from conftest import model_card

SIZE = 192


@pytest.fixture(scope="module")
def crack_model(tmp_path_factory):
    """A ResNet50 that tells generated cracks from plain concrete: a random backbone with a fitted head.

    Fitting only the final layer on pooled layer4 features takes seconds on a CPU, and is exactly the
    setting in which Grad-CAM's channel weights are the head's weights.
    """
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_model().eval()
    spec = Preprocessing(image_size=SIZE, mean=tuple(IMAGENET_MEAN), std=tuple(IMAGENET_STD))
    images, labels = [], []
    for i in range(240):
        img = concrete(rng, SIZE)
        if i % 2:
            draw_crack(img, rng)
        images.append(np.asarray(img))
        labels.append(i % 2)
    x = eval_preset(torch.from_numpy(np.stack(images)), spec)
    body = torch.nn.Sequential(*list(model.children())[:-2])
    with torch.no_grad():
        pooled = torch.cat([body(x[i:i + 40]).mean(dim=(2, 3)) for i in range(0, len(x), 40)])
    y = torch.tensor(labels, dtype=torch.float32)
    mean, std = pooled.mean(0), pooled.std(0) + 1e-6
    w = torch.zeros(pooled.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([w, b], lr=0.01)
    for _ in range(400):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(((pooled - mean) / std) @ w + b, y)
        (loss + 1e-3 * (w ** 2).sum()).backward()
        optimizer.step()
    with torch.no_grad():
        model.fc.weight.copy_((w / std)[None])
        model.fc.bias.copy_(b - (mean * w / std).sum())
    folder = tmp_path_factory.mktemp("cam-model") / "model"
    save_artifact(str(folder), model.state_dict(), model_card(image_size=SIZE, source_size=SIZE))
    return folder


def quadrant_crack(rng, quadrant: int) -> Image.Image:
    img = concrete(rng, SIZE)
    qx, qy = (quadrant % 2) * SIZE // 2, (quadrant // 2) * SIZE // 2
    half = SIZE // 2
    points = [(qx + 0.1 * half, qy + rng.uniform(0.1, 0.6) * half),
              (qx + 0.5 * half, qy + rng.uniform(0.3, 0.7) * half),
              (qx + 0.9 * half, qy + rng.uniform(0.4, 0.9) * half)]
    ImageDraw.Draw(img).line(points, fill=(30, 30, 30), width=4)
    return img


def test_most_heat_falls_on_the_quarter_that_holds_the_crack(crack_model, tmp_path):
    rng = np.random.default_rng(1)
    shares = []
    for k in range(12):
        quadrant = k % 4
        path = tmp_path / f"crack-{k}.png"
        quadrant_crack(rng, quadrant).save(path)
        result = explain(str(crack_model), str(path), str(tmp_path / f"cam-{k}.png"))
        heat = np.asarray(Image.fromarray(result["cam"].astype(np.float32), mode="F").resize((SIZE, SIZE)))
        half = SIZE // 2
        qx, qy = (quadrant % 2) * half, (quadrant // 2) * half
        shares.append(heat[qy:qy + half, qx:qx + half].sum() / heat.sum())
    # A quarter of the image would hold a quarter of the heat by chance; the typical image has most of it there.
    assert np.mean(shares) > 0.45, np.round(shares, 2)
    assert np.median(shares) > 0.5, np.round(shares, 2)


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
    if expected.max() > 0:
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
