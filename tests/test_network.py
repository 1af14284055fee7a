"""The EMSR network: sizes, presets, ablations and the tiling property."""

from __future__ import annotations

import pytest
import torch

from emsr.network import (
    PRESETS,
    StarletEdges,
    WindowTransformer,
    build_model,
    count_parameters,
    use_attention_kernel,
)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", [(16, 16), (17, 23), (5, 9)])
def test_output_is_scale_times_input_for_any_size(scale, size):
    model = build_model("small", scale).eval()
    with torch.no_grad():
        output = model(torch.rand(2, 1, *size))
    assert output.shape == (2, 1, scale * size[0], scale * size[1])


def test_paper_preset_has_the_published_size():
    """About 2.98 M parameters at ×2 and 3.16 M at ×3 in the paper; ours is within 2 %."""
    assert count_parameters(build_model("paper", 2)) == pytest.approx(2.98e6, rel=0.02)
    assert count_parameters(build_model("paper", 3)) == pytest.approx(3.16e6, rel=0.02)
    assert PRESETS["paper"].channels == 64 and PRESETS["paper"].heads * 4 == 64


def test_unknown_preset_and_scale_are_refused():
    with pytest.raises(ValueError, match="unknown preset"):
        build_model("huge", 2)
    with pytest.raises(ValueError, match="scale must be 2, 3 or 4"):
        build_model("small", 5)


def test_ablations_remove_their_parts():
    full = count_parameters(build_model("small", 2))
    no_edges = build_model("small", 2, edge_attention=False)
    no_attention = build_model("small", 2, self_attention=False)
    assert count_parameters(no_edges) < full and count_parameters(no_attention) < full
    assert not any("gates" in name for name, _ in no_edges.named_parameters())
    assert not any("qkv" in name for name, _ in no_attention.named_parameters())


def test_starlet_details_vanish_on_a_constant_image():
    edges = StarletEdges()(torch.full((1, 1, 20, 20), 0.7))
    assert edges.shape == (1, 3, 20, 20)
    assert edges.abs().max() < 1e-6


def test_tile_output_equals_the_same_region_of_a_larger_input_away_from_borders():
    """Windows anchored at a multiple of 4: a crop's centre is computed exactly as in the
    whole image, so tiles from a global lattice stitch seamlessly."""
    torch.manual_seed(0)
    model = build_model("small", 2).eval()
    image = torch.rand(1, 1, 96, 96)
    y, x, size, margin = 24, 32, 40, 20
    with torch.no_grad():
        whole = model(image)
        tile = model(image[..., y - margin : y + size + margin, x - margin : x + size + margin])
    centre = tile[..., 2 * margin : 2 * (margin + size), 2 * margin : 2 * (margin + size)]
    reference = whole[..., 2 * y : 2 * (y + size), 2 * x : 2 * (x + size)]
    assert torch.allclose(centre, reference, atol=1e-4)


def test_a_tile_shifted_off_the_window_grid_differs():
    """The converse: a crop anchored off the 4-pixel grid sees other attention windows."""
    torch.manual_seed(0)
    model = build_model("small", 2).eval()
    image = torch.rand(1, 1, 96, 96)
    with torch.no_grad():
        whole = model(image)
        tile = model(image[..., 2:, 2:])
    assert not torch.allclose(tile[..., 60:100, 60:100], whole[..., 64:104, 64:104], atol=1e-4)


def test_attention_kernels_give_the_same_values():
    """`matmul` spells out what `sdpa` fuses: another speed, the same network."""
    torch.manual_seed(0)
    model = build_model("small", 3).eval()
    image = torch.rand(2, 1, 36, 44)
    with torch.no_grad():
        fused = model(image)
        use_attention_kernel(model, "matmul")
        spelled_out = model(image)
    assert torch.allclose(fused, spelled_out, atol=1e-5)
    with pytest.raises(ValueError, match="attention kernel"):
        use_attention_kernel(model, "flash")


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_window_transformer_keeps_the_memory_format(memory_format):
    """channels_last survives the windows (no layout flip before every convolution on GPU),
    and NCHW stays NCHW, so CPU arithmetic is unchanged."""
    layer = WindowTransformer(channels=16, heads=4, window=4, mlp_ratio=2).eval()
    x = torch.rand(2, 16, 8, 12).contiguous(memory_format=memory_format)
    with torch.no_grad():
        y = layer(x)
        reference = layer(x.contiguous())
    assert y.is_contiguous(memory_format=memory_format)
    assert torch.allclose(y, reference, atol=1e-6)


def test_channels_last_model_matches_nchw():
    torch.manual_seed(0)
    model = build_model("small", 2).eval()
    image = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        nchw = model(image)
        model = model.to(memory_format=torch.channels_last)
        nhwc = model(image.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(nchw, nhwc, atol=1e-5)
