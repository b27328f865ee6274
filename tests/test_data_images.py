"""Images: pad / square / resize outputs, EXIF, colour modes, corrupt files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from llavakit.imaging import fit_square, load_image, to_rgb, to_tensor
from llavakit.errors import DataError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def stripes(w=30, h=10):
    """Left third red, middle green, right third blue."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 3] = RED
    arr[:, w // 3: 2 * w // 3] = GREEN
    arr[:, 2 * w // 3:] = BLUE
    return Image.fromarray(arr)


def test_pad_mode_pads_with_the_mean_colour():
    out = np.asarray(fit_square(stripes(30, 10), 30, "pad", fill=(0.2, 0.4, 0.6)))
    assert out.shape == (30, 30, 3)
    mean = (51, 102, 153)
    assert (out[:10] == mean).all() and (out[20:] == mean).all()  # bands above and below the content
    assert tuple(out[15, 2]) == RED and tuple(out[15, 15]) == GREEN and tuple(out[15, 27]) == BLUE


def test_square_mode_centre_crops():
    out = np.asarray(fit_square(stripes(30, 10), 10, "square"))
    assert out.shape == (10, 10, 3)
    assert (np.abs(out[:, 2:8].astype(int) - GREEN).max()) < 40  # only the middle stripe survives


def test_resize_mode_stretches():
    out = np.asarray(fit_square(stripes(30, 10), 12, "resize"))
    assert out.shape == (12, 12, 3)
    assert tuple(out[6, 1]) == RED and tuple(out[6, 6]) == GREEN and tuple(out[6, 10]) == BLUE


def test_unknown_mode():
    with pytest.raises(DataError, match="image mode 'crop'"):
        fit_square(stripes(), 8, "crop")


def test_to_tensor_normalises():
    img = Image.new("RGB", (5, 7), (255, 0, 128))
    t = to_tensor([img, img], 4, "pad", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert t.shape == (2, 3, 4, 4) and t.dtype.is_floating_point
    assert t[0, 0, 2, 2].item() == pytest.approx(1.0) and t[0, 1, 2, 2].item() == pytest.approx(-1.0)
    assert to_tensor([], 4, "pad", (0.5,) * 3, (0.5,) * 3).shape == (0, 3, 4, 4)


def save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_exif_orientation_is_applied(tmp_path):
    img = stripes(30, 10)  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = save(img, tmp_path / "o.jpg", exif=exif, quality=95)
    out = load_image(path)
    assert out.size == (10, 30)
    top = np.asarray(out)[1, 5].astype(int)
    assert np.abs(top - RED).max() < 60  # the left edge is now at the top


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda: Image.new("L", (4, 4), 77), (77, 77, 77)),
        (lambda: Image.new("1", (4, 4), 1), (255, 255, 255)),
        (lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
        (lambda: Image.new("RGBA", (4, 4), (10, 20, 30, 0)), (255, 255, 255)),  # transparent → white
        (lambda: Image.new("RGBA", (4, 4), (10, 20, 30, 255)), (10, 20, 30)),
        (lambda: Image.new("LA", (4, 4), (90, 255)), (90, 90, 90)),
        (lambda: Image.new("I;16", (4, 4), 257 * 100), (100, 100, 100)),
        (lambda: Image.new("I", (4, 4), 65535), (255, 255, 255)),
        (lambda: Image.new("F", (4, 4), 0.5), (0, 0, 0)),  # constant float image: min–max → 0
    ],
)
def test_modes_become_8bit_rgb(make, expect):
    out = to_rgb(make())
    assert out.mode == "RGB" and tuple(np.asarray(out)[1, 1]) == expect


def test_palette_with_transparency_and_16bit_png(tmp_path):
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.info["transparency"] = 0
    pal.putpixel((0, 0), 0)
    out = load_image(save(pal, tmp_path / "p.png"))
    assert tuple(np.asarray(out)[0, 0]) == (255, 255, 255) and tuple(np.asarray(out)[2, 2]) == (200, 10, 10)
    arr = np.full((3, 3), 257 * 200, dtype=np.uint16)
    sixteen = save(Image.fromarray(arr), tmp_path / "g16.png")
    assert Image.open(sixteen).mode.startswith("I")
    assert tuple(np.asarray(load_image(sixteen))[1, 1]) == (200, 200, 200)
    cmyk = load_image(save(Image.new("CMYK", (3, 3), (0, 0, 255, 0)), tmp_path / "c.jpg"))
    assert np.abs(np.asarray(cmyk)[1, 1].astype(int) - (255, 255, 0)).max() < 8


def test_missing_truncated_and_garbage_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image(tmp_path / "none.png")
    with pytest.raises(DataError, match="is a directory"):
        load_image(tmp_path)
    good = save(Image.effect_noise((64, 64), 50).convert("RGB"), tmp_path / "n.png")
    data = good.read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"trunc.png cannot be decoded"):
        load_image(tmp_path / "trunc.png")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(DataError, match="cannot be decoded"):
        load_image(tmp_path / "text.jpg")


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((24, 16), 40).convert("RGB").save(buf, format=fmt)
    return buf.getvalue()


SAMPLES = {fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")}


@settings(max_examples=150, deadline=None)
@given(
    fmt=st.sampled_from(sorted(SAMPLES)),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=6),
)
def test_corrupt_files_raise_data_error_only(tmp_path_factory, fmt, cut, flips):
    """Whatever the damage, loading gives an RGB image or a DataError — never another exception."""
    data = bytearray(SAMPLES[fmt])
    for where, value in flips:
        data[int(where * (len(data) - 1))] = value
    data = bytes(data[: max(1, int(cut * len(data)))])
    path = tmp_path_factory.mktemp("fuzz") / f"x.{fmt.lower()}"
    path.write_bytes(data)
    try:
        img = load_image(path)
    except DataError as exc:
        assert str(path) in str(exc)
    else:
        assert img.mode == "RGB" and img.size[0] > 0
