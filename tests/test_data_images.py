"""palijudge.data.images: decoding odd files and preprocessing parity."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from palijudge.data import images
from palijudge.errors import UserError

from testing import FIXTURES

FIXTURE = FIXTURES / "paligemma-tiny" / "reference.npz"
SIZE = 16


def _check_output(x: np.ndarray, size: int = SIZE) -> None:
  assert x.shape == (size, size, 3)
  assert x.dtype == np.float32
  assert x.min() >= -1.0 and x.max() <= 1.0


def test_preprocess_matches_big_vision_fixture():
  ref = np.load(FIXTURE)
  inp, want = ref["pp_image_in_uint8"], ref["pp_image_out"]
  assert inp.shape == (37, 53, 3)
  got = images.preprocess(inp, 56)
  _check_output(got, 56)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_preprocess_same_size_only_rescales():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
  got = images.preprocess(x, SIZE)
  np.testing.assert_array_equal(got, x.astype(np.float32) / 127.5 - 1)
  _check_output(got)


def test_preprocess_upscale_in_range():
  x = np.array([[[0, 255, 0], [255, 0, 255]]], dtype=np.uint8)
  _check_output(images.preprocess(x, SIZE))


def test_preprocess_rejects_bad_shape():
  with pytest.raises(ValueError):
    images.preprocess(np.zeros((4, 4), np.uint8), SIZE)


def test_palette_png_with_transparency(tmp_path):
  img = Image.new("P", (4, 4), 0)
  img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
  img.putpixel((0, 0), 1)
  path = tmp_path / "p.png"
  img.save(path, transparency=0)
  rgb = images.decode_rgb(path)
  assert rgb.dtype == np.uint8 and rgb.shape == (4, 4, 3)
  assert tuple(rgb[0, 0]) == (255, 0, 0)
  assert tuple(rgb[3, 3]) == (255, 255, 255)  # transparent black -> white
  _check_output(images.load_image(path, SIZE))


def test_la_png(tmp_path):
  a = np.zeros((2, 3, 2), np.uint8)
  a[0, 0] = (0, 255)      # opaque black
  a[0, 1] = (0, 0)        # transparent black
  a[0, 2] = (0, 128)      # half transparent black
  path = tmp_path / "la.png"
  Image.fromarray(a, "LA").save(path)
  rgb = images.decode_rgb(path)
  assert tuple(rgb[0, 0]) == (0, 0, 0)
  assert tuple(rgb[0, 1]) == (255, 255, 255)
  assert all(abs(int(v) - 127) <= 1 for v in rgb[0, 2])
  _check_output(images.load_image(path, SIZE))


def test_rgba_transparent_becomes_white(tmp_path):
  a = np.zeros((3, 3, 4), np.uint8)
  a[1, 1] = (0, 0, 255, 255)
  path = tmp_path / "rgba.png"
  Image.fromarray(a, "RGBA").save(path)
  rgb = images.decode_rgb(path)
  assert tuple(rgb[1, 1]) == (0, 0, 255)
  assert tuple(rgb[0, 0]) == (255, 255, 255)
  _check_output(images.load_image(path, SIZE))


def test_cmyk_jpeg(tmp_path):
  path = tmp_path / "cmyk.jpg"
  Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=95)
  rgb = images.decode_rgb(path)
  assert rgb.shape == (8, 8, 3)
  np.testing.assert_allclose(rgb[4, 4], (255, 0, 0), atol=8)
  _check_output(images.load_image(path, SIZE))


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path):
  a = np.array([[0, 128 * 257, 65535]], dtype=np.uint16)
  path = tmp_path / "g16.png"
  Image.fromarray(a).save(path)
  with Image.open(path) as img:
    assert img.mode.startswith("I")
  rgb = images.decode_rgb(path)
  np.testing.assert_array_equal(rgb[0, :, 0], [0, 128, 255])
  np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
  _check_output(images.load_image(path, SIZE))


def test_exif_orientation_is_applied(tmp_path):
  a = np.full((20, 40, 3), 255, np.uint8)  # stored 20 high, 40 wide
  a[:6, :6] = (255, 0, 0)                  # red stored top-left corner
  img = Image.fromarray(a)
  exif = img.getexif()
  exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
  path = tmp_path / "rot.jpg"
  img.save(path, exif=exif.tobytes(), quality=95)
  rgb = images.decode_rgb(path)
  assert rgb.shape == (40, 20, 3)
  np.testing.assert_allclose(rgb[1, 18], (255, 0, 0), atol=30)  # top-right
  np.testing.assert_allclose(rgb[1, 1], (255, 255, 255), atol=30)
  np.testing.assert_allclose(rgb[38, 1], (255, 255, 255), atol=30)


COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


@pytest.mark.parametrize("ext", ["gif", "png"])
@pytest.mark.parametrize("policy,colour", [("first", COLOURS[0]),
                                           ("middle", COLOURS[1]),
                                           ("last", COLOURS[2])])
def test_animated_frame_policy(tmp_path, ext, policy, colour):
  frames = [Image.new("RGB", (8, 6), c) for c in COLOURS]
  path = tmp_path / f"anim.{ext}"
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=100,
                 loop=0)
  with Image.open(path) as img:
    assert img.n_frames == 3
  rgb = images.decode_rgb(path, gif_frame=policy)
  assert rgb.shape == (6, 8, 3)
  assert tuple(rgb[3, 4]) == colour
  _check_output(images.load_image(path, SIZE, gif_frame=policy))


def test_unknown_frame_policy(tmp_path):
  with pytest.raises(ValueError):
    images.decode_rgb(tmp_path / "x.gif", gif_frame="second")


def test_truncated_jpeg(tmp_path):
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
  path = tmp_path / "cut.jpg"
  Image.fromarray(a).save(path, quality=90)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(UserError, match="cannot decode image") as e:
    images.decode_rgb(path)
  assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_not_an_image(tmp_path):
  path = tmp_path / "notes.png"
  path.write_text("hello, I am text\n")
  with pytest.raises(UserError, match="cannot decode image") as e:
    images.load_image(path, SIZE)
  assert str(path) in str(e.value)


def test_missing_file(tmp_path):
  path = tmp_path / "nope.jpg"
  with pytest.raises(UserError, match="not found") as e:
    images.decode_rgb(path)
  assert str(path) in str(e.value)


def test_directory_is_refused(tmp_path):
  with pytest.raises(UserError):
    images.decode_rgb(tmp_path)


@pytest.mark.parametrize("limit", [250, 100])  # 400 px: over 1x, over 2x
def test_decompression_bomb(tmp_path, monkeypatch, limit):
  path = tmp_path / "big.png"
  Image.new("RGB", (20, 20), (1, 2, 3)).save(path)
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
  with pytest.raises(UserError, match="decompression bomb") as e:
    images.decode_rgb(path)
  assert str(path) in str(e.value)


def _disagreeing_gif(path, colours):
  frames = [Image.new("RGB", (8, 6), c) for c in colours]
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
  return path


def test_frame_indices():
  assert images.frame_indices(5) == [0, 1, 2, 3, 4]
  assert images.frame_indices(10, 3) == [0, 4, 9]  # round(4.5) = 4 (banker's)
  assert images.frame_indices(10, 1) == [0]
  assert images.frame_indices(3, 8) == [0, 1, 2]
  assert images.frame_indices(1, 4) == [0]


def test_decode_and_load_every_frame(tmp_path):
  colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (250, 250, 250), (0, 0, 0)]
  path = _disagreeing_gif(tmp_path / "anim.gif", colours)
  frames = images.decode_frames(path)
  assert [tuple(f[3, 4]) for f in frames] == colours
  assert [tuple(f[3, 4]) for f in images.decode_frames(path, 3)] == [colours[i] for i in (0, 2, 4)]
  x = images.load_frames(path, SIZE, 2)
  assert x.shape == (2, SIZE, SIZE, 3) and x.dtype == np.float32
  assert tuple(images.decode_rgb(path, "all")[3, 4]) == colours[0]  # One frame: the first.
  still = tmp_path / "still.png"
  Image.new("RGB", (4, 4), (1, 2, 3)).save(still)
  assert images.load_frames(still, SIZE).shape == (1, SIZE, SIZE, 3)


def test_combine_policies():
  p = np.array([0.9, 0.2, 0.7])
  assert images.combine(p, "min") == pytest.approx(0.2)
  assert images.combine(p, "mean") == pytest.approx(0.6)
  assert images.combine(p, "max") == pytest.approx(0.9)
  with pytest.raises(ValueError):
    images.combine(p, "median")


def test_frames_of_a_corrupt_file(tmp_path):
  path = tmp_path / "bad.gif"
  path.write_bytes(b"GIF89a broken")
  with pytest.raises(UserError, match="cannot decode image") as e:
    images.decode_frames(path)
  assert str(path) in str(e.value)
