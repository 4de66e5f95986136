"""The scene-descriptor encoder: an encoder that sees without weights. Known answers on images whose
descriptors can be worked out by hand, determinism, the CPU and CUDA paths, and that it carries location."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from locdiff_pipeline.data.bundled import BLUE_MARBLE, render_window
from locdiff_pipeline.encoders import scene_descriptors as sd
from locdiff_pipeline.encoders.encoder_spec import DESCRIPTORS, EncoderSpec
from locdiff_pipeline.encoders.image_encoder import DESCRIPTORS_NOTE, build_encoder, encoder_note

SPEC = sd.DescriptorSpec()


def flat(rgb: tuple[float, float, float], px: int = SPEC.image_px) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32)[None, :, None, None].expand(1, 3, px, px).clone()


def test_a_flat_colour_fills_the_bins_around_its_lab_colour_and_has_no_texture():
    grey = flat((0.5, 0.5, 0.5))
    lab = sd.rgb_to_lab(grey)
    assert abs(float(lab[0, 1, 0, 0])) < 0.01 and abs(float(lab[0, 2, 0, 0])) < 0.01  # grey: a = b = 0
    shares = sd.colour_histogram(lab, SPEC.lab_bins)[0].reshape(SPEC.lab_bins) ** 2  # square-rooted shares
    assert float(shares.sum()) == pytest.approx(1.0, abs=1e-5)
    filled = torch.nonzero(shares > 1e-6)
    # a = b = 0 lies halfway between the centres of the two middle bins of [-60, 60]: both hold half
    assert set(filled[:, 1].tolist()) == {3, 4} and set(filled[:, 2].tolist()) == {3, 4}
    assert float(shares[:, 3:5, 3:5].sum()) == pytest.approx(1.0, abs=1e-5)
    layout = sd.colour_layout(lab, SPEC.layout_grid)[0]
    cells = SPEC.layout_grid**2
    assert torch.allclose(layout[:cells], lab[0, 0, 0, 0] / 100)  # every cell's mean L is the colour's
    assert float(layout[3 * cells :].abs().max()) < 1e-4  # one colour everywhere: no spread in any cell
    assert float(sd.gist(grey, SPEC).abs().max()) < 1e-4  # and no structure at any scale or orientation


def test_gist_sees_orientation():
    rows = torch.arange(SPEC.image_px, dtype=torch.float32)
    stripes = 0.5 + 0.4 * torch.sin(2 * torch.pi * rows / 8)  # a period of 8 px: the finest scales
    horizontal = stripes[:, None].expand(SPEC.image_px, SPEC.image_px)  # varies down the image
    energies = []
    for image in (horizontal, horizontal.T):
        rgb = image[None, None].expand(1, 3, -1, -1).contiguous()
        energies.append(sd.gist(rgb, SPEC).reshape(SPEC.gist_scales, SPEC.gist_orientations, -1).sum(dim=(0, 2)))
    # the filter bank's orientation 0 looks along x (vertical stripes), orientation 3 (90 degrees) along y
    assert int(energies[1].argmax()) == 0 and int(energies[0].argmax()) == SPEC.gist_orientations // 2


def test_descriptors_are_deterministic_unit_norm_and_named_for_what_they_are():
    with Image.open(BLUE_MARBLE) as image:
        world = np.asarray(image.convert("RGB"))
    images = [render_window(world, lat, lon, 4.0, 96) for lat, lon in ((45.0, 7.0), (-33.9, 151.2), (24.0, 12.0))]
    first, second = build_encoder(EncoderSpec()), build_encoder(EncoderSpec(DESCRIPTORS))
    a, b = first.embed(images), second.embed(images)
    assert a.shape == (3, SPEC.dim) and np.array_equal(a, b)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(first.embed_views(images, ["x", "y", "z"], 4, "north_up")[:, 0], a)
    identity = first.identity
    assert identity.label == "descriptors-v1" and not identity.is_pretrained and identity.embed_dim == SPEC.dim
    assert DESCRIPTORS_NOTE in encoder_note(identity.to_dict()) and "CLIP" not in identity.label
    with pytest.raises(ValueError, match="no weights"):
        EncoderSpec(DESCRIPTORS, checkpoint="weights.pt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_the_cuda_path_gives_the_cpu_descriptors():
    pixels = torch.rand(16, 3, SPEC.image_px, SPEC.image_px, generator=torch.Generator().manual_seed(0))
    on_cpu = sd.describe(pixels, SPEC)
    on_gpu = sd.describe(pixels.cuda(), SPEC).cpu()
    assert torch.allclose(on_cpu, on_gpu, atol=1e-5)


def test_a_desert_and_an_ocean_are_far_apart_and_two_views_of_one_place_close():
    with Image.open(BLUE_MARBLE) as image:
        world = np.asarray(image.convert("RGB"))
    encoder = build_encoder(EncoderSpec())
    sahara, sahara_nearby, pacific = (
        render_window(world, lat, lon, 4.0, 96) for lat, lon in ((24.0, 12.0), (24.5, 12.5), (-20.0, -140.0))
    )
    vectors = encoder.embed([sahara, sahara_nearby, pacific])
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.1
