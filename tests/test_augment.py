"""Augmentation keeps storms physical: vorticity survives rotation, reflection flips it, scalars just move."""
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tornado.augment import AugmentConfig, augment, rotate, transform
from tornado.errors import TornadoError

H = W = 32
YS = torch.arange(H, dtype=torch.float64) - (H - 1) / 2  # centred pixel coordinates, row index -> north
XS = torch.arange(W, dtype=torch.float64) - (W - 1) / 2  # column index -> east
Y, X = torch.meshgrid(YS, XS, indexing="ij")
INTERIOR = (X**2 + Y**2) < 11**2  # never sampled from outside the patch at any angle


def curl(u, v):
    """Vertical vorticity dv/dx - du/dy by central differences (grid spacing 1)."""
    return torch.gradient(v, dim=-1)[0] - torch.gradient(u, dim=-2)[0]


def divergence(u, v):
    return torch.gradient(u, dim=-1)[0] + torch.gradient(v, dim=-2)[0]


def solid_body(omega=0.5):
    return -omega * Y, omega * X


def rankine(xc=4.0, yc=-3.0, radius=5.0, omega=0.5):
    dx, dy = X - xc, Y - yc
    r2 = dx**2 + dy**2
    f = torch.where(r2 <= radius**2, torch.ones_like(r2), radius**2 / r2.clamp_min(1e-12))
    return -omega * dy * f, omega * dx * f


def lamb_oseen(xc=4.0, yc=-3.0, radius=4.0, circulation=10.0):
    dx, dy = X - xc, Y - yc
    r2 = (dx**2 + dy**2).clamp_min(1e-12)
    k = circulation / (2 * math.pi * r2) * (1 - torch.exp(-r2 / radius**2))
    return -dy * k, dx * k


def storm(u, v):
    """A (1, 3, H, W) patch whose scalar channel holds the field's own vorticity, to be moved alongside."""
    return torch.stack([curl(u, v), u, v])[None].float()


def vorticity_error(out):
    """Mean |curl(rotated wind) - rotated curl| over the interior, relative to the largest vorticity."""
    o = out[0].double()
    d = (curl(o[1], o[2]) - o[0])[INTERIOR]
    return (d.abs().mean() / o[0][INTERIOR].abs().max()).item()


# field, and the largest relative vorticity error allowed after a vector rotation (discretisation only:
# a linear field is interpolated exactly; the Rankine core's edge is a jump)
FIELDS = {
    "solid_body": (solid_body, 1e-5),
    "rankine_off_centre": (rankine, 0.015),
    "lamb_oseen_off_centre": (lamb_oseen, 0.008),
}


@pytest.mark.parametrize("name", sorted(FIELDS))
@pytest.mark.parametrize("degrees", [30.0, 90.0, 135.0, -60.0, 200.0])
def test_rotated_wind_keeps_the_rotated_vorticity(name, degrees):
    field, tol = FIELDS[name]
    x = storm(*field())
    assert vorticity_error(rotate(x, degrees)) < tol


@pytest.mark.parametrize("name", ["rankine_off_centre", "lamb_oseen_off_centre"])
@pytest.mark.parametrize("degrees", [30.0, 90.0])
def test_turning_the_image_alone_breaks_the_vorticity(name, degrees):
    field, tol = FIELDS[name]
    assert vorticity_error(rotate(storm(*field()), degrees, rotate_vectors=False)) > 2 * tol


def test_image_only_quarter_turn_makes_a_vortex_a_source():
    u, v = solid_body(omega=0.5)
    for rv, want_curl, want_div in [(True, 1.0, 0.0), (False, 0.0, 1.0)]:
        o = rotate(storm(u, v), 90.0, rotate_vectors=rv)[0].double()
        assert torch.allclose(curl(o[1], o[2])[INTERIOR], torch.tensor(want_curl, dtype=torch.float64), atol=1e-4)
        assert torch.allclose(divergence(o[1], o[2])[INTERIOR], torch.tensor(want_div, dtype=torch.float64), atol=1e-4)


def test_positive_angle_turns_counter_clockwise():
    refl = torch.exp(-((X - 7.5) ** 2 + (Y - 0.5) ** 2) / 4)  # a blob 7.5 px east of the centre
    x = torch.stack([refl, torch.ones_like(refl), torch.zeros_like(refl)])[None].float()  # wind from the west
    o = rotate(x, 90.0)[0]
    row, col = divmod(int(o[0].argmax()), W)
    assert (YS[row].item(), XS[col].item()) == (pytest.approx(7.5), pytest.approx(-0.5))  # now north
    assert torch.allclose(o[1], torch.zeros(H, W), atol=1e-5)  # the westerly became a southerly
    assert torch.allclose(o[2], torch.ones(H, W), atol=1e-5)


def test_quarter_turn_of_a_wide_patch_keeps_distances():
    h, w = 24, 40
    ys, xs = torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    blob = torch.exp(-((xx - 6.0) ** 2 + (yy - 4.0) ** 2) / 2)  # 6 px east and 4 px north of the centre
    o = rotate(torch.stack([blob, blob, blob])[None], 90.0, rotate_vectors=False)[0, 0]
    row, col = divmod(int(o.argmax()), w)
    assert (ys[row].item(), xs[col].item()) == (pytest.approx(6.0, abs=0.5), pytest.approx(-4.0, abs=0.5))


def test_quarter_turn_moves_pixels_exactly():
    x = torch.randn(4, 3, H, W)
    o = rotate(x, 90.0, rotate_vectors=False)
    assert torch.allclose(o, torch.rot90(x, k=1, dims=(-1, -2)), atol=1e-5)


def test_zero_turn_is_identity_and_full_turns_nearly():
    x = torch.randn(8, 3, H, W) * 10
    assert torch.equal(rotate(x, 0.0), x)
    assert torch.allclose(rotate(x, 360.0), x, atol=1e-3)
    y = x
    for _ in range(4):
        y = rotate(y, 90.0)
    assert torch.allclose(y, x, atol=1e-3)


def test_four_small_turns_compose_in_the_interior():
    u, v = lamb_oseen()
    x = storm(u, v)
    y = x
    for _ in range(4):
        y = rotate(y, 22.5)
    d = (y - rotate(x, 90.0))[0][:, INTERIOR]
    # bilinear resampling blurs a little each time; the winds and scalar still land where one turn puts them
    assert d.abs().max() < 0.1 * x.abs().max()
    assert (y - x)[0][:, INTERIOR].abs().max() > 0.5 * x.abs().max()  # and that is not where they started


def test_scalar_channel_only_moves():
    x = torch.randn(3, 3, H, W)
    same = x[:, :1].expand(3, 3, H, W).contiguous()  # the same picture in all three channels
    o = rotate(same, 30.0, rotate_vectors=False)
    assert torch.allclose(o[:, 1], o[:, 0]) and torch.allclose(o[:, 2], o[:, 0])
    assert torch.equal(rotate(x, 30.0)[:, 0], rotate(x, 30.0, rotate_vectors=False)[:, 0])
    assert not torch.allclose(rotate(x, 30.0)[:, 1], rotate(x, 30.0, rotate_vectors=False)[:, 1])


def test_per_sample_angles():
    one = storm(*rankine())
    angles = torch.tensor([0.0, 30.0, 90.0, -45.0])
    o = rotate(one.expand(4, 3, H, W).contiguous(), angles)
    for k, a in enumerate(angles.tolist()):
        assert torch.allclose(o[k : k + 1], rotate(one, a), atol=1e-6)
    assert not torch.allclose(o[1], o[2])


def test_reflection_mirrors_the_grid_and_flips_u():
    x = storm(*rankine())
    o = transform(x, flip=True)
    want = torch.flip(x, dims=[-1]) * torch.tensor([1.0, -1.0, 1.0]).view(1, 3, 1, 1)
    assert torch.allclose(o[:, 1:], want[:, 1:], atol=1e-6)
    # the mirrored storm spins the other way: its vorticity is minus the mirrored vorticity
    c = curl(o[0, 1].double(), o[0, 2].double())
    assert torch.allclose(c[2:-2, 2:-2], -o[0, 0].double()[2:-2, 2:-2], atol=1e-5)
    assert o[0, 0].max() > 0.5 and c.min() < -0.5


@pytest.mark.parametrize("degrees", [30.0, 90.0, -120.0])
def test_reflection_composes_with_vector_rotation(degrees):
    u, v = solid_body(omega=0.5)
    o = transform(storm(u, v), degrees=degrees, flip=True)[0].double()
    assert torch.allclose(curl(o[1], o[2])[INTERIOR], torch.tensor(-1.0, dtype=torch.float64), atol=1e-4)
    x = storm(*lamb_oseen())
    x[:, 0] *= -1  # the vorticity a mirrored storm should have, moved like a scalar
    assert vorticity_error(transform(x, degrees=degrees, flip=True)) < FIELDS["lamb_oseen_off_centre"][1]


def test_shift_moves_east_and_north():
    refl = torch.exp(-((X - 0.5) ** 2 + (Y - 0.5) ** 2) / 4)
    x = torch.stack([refl, refl, refl])[None].float()
    o = transform(x, shift=torch.tensor([[0.25, -0.125]]), rotate_vectors=False)[0]  # 8 px east, 4 px south
    row, col = divmod(int(o[0].argmax()), W)
    assert (YS[row].item(), XS[col].item()) == (pytest.approx(-3.5), pytest.approx(8.5))


def test_zoom_resamples_but_keeps_wind_speed():
    u = torch.full((H, W), 3.0, dtype=torch.float64)
    v = torch.full((H, W), 4.0, dtype=torch.float64)
    refl = torch.exp(-(X**2 + Y**2) / 8)
    x = torch.stack([refl, u, v])[None].float()
    o = transform(x, degrees=40.0, scale=0.5)[0]
    assert torch.allclose(torch.hypot(o[1], o[2]), torch.tensor(5.0), atol=1e-5)
    assert o[0].sum() > 3 * x[0, 0].sum()  # zoomed in: the blob covers four times the area
    # twice as large with the same winds: the gradients, and with them the vorticity, halve
    ls = storm(*lamb_oseen(xc=0.5, yc=0.5))
    z = transform(ls, scale=0.5)[0].double()
    assert curl(z[1], z[2])[H // 2, W // 2] == pytest.approx(0.5 * ls[0, 0, H // 2, W // 2].item(), rel=0.05)


def test_augment_draws_per_sample_parameters():
    one = storm(*rankine())
    x = one.expand(6, 3, H, W).contiguous()
    o = augment(x, AugmentConfig(rotation=90.0), torch.Generator().manual_seed(1))
    for i in range(1, 6):
        assert not torch.allclose(o[0], o[i], atol=1e-3)
    for k in range(6):  # each one is a rotation of the same storm: the vorticity is kept
        assert vorticity_error(o[k : k + 1]) < FIELDS["rankine_off_centre"][1]


def test_augment_draws_each_parameter_uniformly_and_independently(monkeypatch):
    import tornado.augment as aug

    seen = {}
    monkeypatch.setattr(aug, "transform", lambda x, **kw: seen.update(kw) or x)
    augment(torch.zeros(4000, 3, 2, 2), AugmentConfig(rotation=10.0, translate=0.2, zoom=0.3, reflect=True),
            torch.Generator().manual_seed(0))
    draws = torch.stack([seen["degrees"] / 10.0, seen["shift"][:, 0] / 0.2, seen["shift"][:, 1] / 0.2,
                         (seen["scale"] - 1.0) / 0.3, 2.0 * seen["flip"].double() - 1.0]).double()
    assert draws.min() >= -1 and draws.max() <= 1
    assert torch.allclose(draws.mean(1), torch.zeros(5, dtype=torch.float64), atol=0.05)
    assert torch.allclose(draws[:4].abs().mean(1), torch.full((4,), 0.5, dtype=torch.float64), atol=0.03)
    corr = torch.corrcoef(draws) - torch.eye(5, dtype=torch.float64)
    assert corr.abs().max() < 0.1


def test_augment_reflects_about_half():
    x = storm(*rankine()).expand(200, 3, H, W).contiguous()
    o = augment(x, AugmentConfig(rotation=0.0, reflect=True), torch.Generator().manual_seed(0))
    mirrored = torch.flip(x, dims=[-1]) * torch.tensor([1.0, -1.0, 1.0]).view(1, 3, 1, 1)
    same = torch.isclose(o, x, atol=1e-5).flatten(1).all(1)
    flipped = torch.isclose(o, mirrored, atol=1e-5).flatten(1).all(1)
    assert bool((same ^ flipped).all())
    assert 60 < int(flipped.sum()) < 140


def test_augment_is_deterministic_for_a_seed():
    x = torch.randn(64, 3, H, W)
    cfg = AugmentConfig(rotation=30.0, translate=0.1, zoom=0.1, reflect=True)
    a = augment(x, cfg, torch.Generator().manual_seed(7))
    b = augment(x, cfg, torch.Generator().manual_seed(7))
    c = augment(x, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_augment_half_precision(dtype):
    x = (torch.randn(16, 3, H, W) * 10).to(dtype)
    cfg = AugmentConfig(rotation=20.0)
    a = augment(x, cfg, torch.Generator().manual_seed(0))
    b = augment(x.float(), cfg, torch.Generator().manual_seed(0))
    assert a.dtype == dtype
    assert torch.equal(a, b.to(dtype))  # warped in float32, rounded once


def test_config_from_cfg():
    cfg = OmegaConf.create({"rotation": 10, "translate": 0.1, "zoom": 0.2, "reflect": True, "rotate_vectors": False})
    c = AugmentConfig.from_cfg(cfg)
    assert c == AugmentConfig(rotation=10, translate=0.1, zoom=0.2, reflect=True, rotate_vectors=False)
    paper = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "augment" / "paper.yaml")
    assert AugmentConfig.from_cfg(paper) == AugmentConfig()


@pytest.mark.parametrize(
    "key, value",
    [("rotation", -1.0), ("rotation", 361.0), ("rotation", "ten"), ("translate", 1.5), ("translate", -0.1),
     ("zoom", 1.0), ("zoom", -0.2), ("zoom", float("nan")), ("reflect", "yes"), ("rotate_vectors", 1)],
)
def test_bad_config_names_the_key(key, value):
    with pytest.raises(TornadoError, match=f"augment.{key}"):
        AugmentConfig.from_cfg({key: value})


def test_unknown_key_is_an_error():
    with pytest.raises(TornadoError, match="augment.rotaton"):
        AugmentConfig.from_cfg({"rotaton": 10})
