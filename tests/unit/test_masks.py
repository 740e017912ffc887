"""The mask decoder beside the crack head: one pass, the classifier's own logit, masks at the input's size
that learn thin cracks."""

import numpy as np
import pytest
import torch

from cracknet.demo.synthetic import masked_photo
from cracknet.images.decoding import Preprocessing, eval_preset
from cracknet.model.masks import CrackSegmenter, mask_loss
from cracknet.model.network import build_model


def test_one_pass_gives_the_classifiers_own_logit_and_a_mask_at_the_inputs_size():
    torch.manual_seed(0)
    classifier = build_model().eval()
    model = CrackSegmenter(classifier).eval()
    x = torch.randn(2, 3, 70, 90)
    with torch.no_grad():
        logit, masks = model(x)
        alone = classifier(x).squeeze(1)
    assert masks.shape == (2, 1, 70, 90)
    assert torch.allclose(logit, alone, atol=1e-5)
    assert set(classifier.state_dict()) <= {k.removeprefix("classifier.") for k in model.state_dict()}


def test_the_loss_prefers_the_crack_to_all_background():
    target = torch.zeros(1, 1, 32, 32)
    target[..., 15:17, :] = 1  # a 2 px crack: 6% of the pixels
    background = torch.full_like(target, -6.0)
    right = torch.where(target > 0, 6.0, -6.0)
    assert mask_loss(right, target) < 0.05 < mask_loss(background, target)
    assert mask_loss(background, target) > 0.9  # Dice: an empty answer misses every crack pixel


def test_the_decoder_fits_thin_generated_cracks_at_full_resolution():
    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    photos, masks = [], []
    while len(photos) < 8:
        photo, mask, truth = masked_photo(rng, 64, "concrete", cracks=1)
        if truth and truth[0]["width_px"] <= 4:  # thin ones: 2-4 px
            photos.append(np.asarray(photo))
            masks.append(mask)
    x = eval_preset(torch.from_numpy(np.stack(photos)), Preprocessing(64))
    y = torch.from_numpy(np.stack(masks)).float().unsqueeze(1)
    model = CrackSegmenter(build_model())
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        _, logits = model(x)
        loss = mask_loss(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        predicted = torch.sigmoid(model(x)[1]) > 0.5
    hit = (predicted & (y > 0)).sum().item()
    f1 = 2 * hit / max(predicted.sum().item() + (y > 0).sum().item(), 1)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert f1 > 0.8, f1  # on the photos it fitted: 2-4 px cracks are resolved at full resolution


def test_overlapping_tiles_stitch_into_one_map_of_the_photo_without_seams():
    from cracknet.images.decoding import tile_boxes
    from cracknet.predict.stitching import stitch

    width, height = 300, 200
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    photo = (xx + 2 * yy) / (width + 2 * height)  # a smooth map: stitched back, it must come out the same
    boxes = tile_boxes(width, height, 128, 0.25)
    assert len(boxes) > 2
    tiles = torch.stack([torch.nn.functional.interpolate(photo[None, None, y:y + h, x:x + w], size=(64, 64),
                                                         mode="bilinear", align_corners=False)[0, 0]
                         for x, y, w, h in boxes])  # each tile's map at the model's size
    stitched = stitch(tiles, boxes, width, height)
    assert stitched.shape == (height, width)
    assert (stitched - photo).abs().max() < 0.02
    one = stitch(torch.ones(1, 8, 8), [(10, 20, 30, 40)], 100, 100)
    assert torch.allclose(one[20:60, 10:40], torch.ones(40, 30)) and one.sum().item() == pytest.approx(30 * 40)
    assert one[:20].sum() == 0 and one[:, 40:].sum() == 0  # uncovered pixels are 0


def test_a_photo_too_coarse_for_the_first_width_class_gets_millimetres_but_no_severity():
    # The rule every caller shares (nightly scoring, explain): photo_cracks applies it.
    import numpy as np

    from cracknet.predict.stitching import photo_cracks

    probs = np.zeros((64, 64), dtype=np.float32)
    probs[30:33, 8:56] = 0.9
    boxes = [(0, 0, 64, 64)]
    _, fine = photo_cracks({0: probs}, boxes, 64, 64, 0.5, mm_per_pixel=0.1)
    _, coarse = photo_cracks({0: probs}, boxes, 64, 64, 0.5, mm_per_pixel=0.5)
    assert len(fine) == len(coarse) == 1
    assert fine[0]["severity"] == "moderate" and coarse[0]["severity"] is None
    assert coarse[0]["length_mm"] == pytest.approx(5 * fine[0]["length_mm"])
