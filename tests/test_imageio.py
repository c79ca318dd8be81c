"""Image loading/saving (conversions, error messages) and drawing / anonymisation."""

import io
import threading

import numpy as np
import pytest
from PIL import Image, ImageOps

from tinyfaces_trt.runtime.draw import blur_boxes, box_regions, draw_boxes, pixelate_boxes
from tinyfaces_trt.core.errors import ConfigError, ImageError, ImageTooLargeError, TinyFacesError
from tinyfaces_trt.runtime import imageio
from tinyfaces_trt.runtime.imageio import decode_image, encode_image, load_image, save_image


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)


# ------------------------------------------------------------------ loading
def test_png_roundtrip_is_exact(tmp_path, rgb):
    save_image(tmp_path / "a.png", rgb)
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, rgb)
    save_image(str(tmp_path / "g.png"), rgb[:, :, 0])  # grayscale array, str path
    np.testing.assert_array_equal(load_image(str(tmp_path / "g.png")), np.repeat(rgb[:, :, :1], 3, 2))


def test_exif_orientation_is_applied(tmp_path, rgb):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(rgb).save(tmp_path / "o.png", exif=exif)
    out = load_image(tmp_path / "o.png")
    np.testing.assert_array_equal(out, np.rot90(rgb, k=-1))


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "1"])
def test_modes_convert_to_rgb(tmp_path, rgb, mode):
    im = Image.fromarray(rgb).convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    im.save(path)
    out = load_image(path)
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(im.convert("RGB")))


@pytest.mark.parametrize("alpha", [0, 128])
def test_alpha_is_dropped_not_composited(tmp_path, rgb, alpha):
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], alpha, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    # the colour values as stored, not blended onto black or white
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), rgb)


def test_sixteen_bit_grayscale_is_scaled(tmp_path):
    values = np.array([[0, 128, 129, 257 * 100], [65535, 257, 65280, 32896]], np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    out = load_image(tmp_path / "d.png")
    expected = np.array([[0, 0, 1, 100], [255, 1, 254, 128]], np.uint8)
    np.testing.assert_array_equal(out, np.repeat(expected[:, :, None], 3, axis=2))


def test_float_image_in_0_1_is_scaled_not_black(tmp_path):
    values = np.array([[0.0, 0.5, 1.0], [0.25, np.nan, 0.75]], np.float32)
    Image.fromarray(values, mode="F").save(tmp_path / "f.tif")
    out = load_image(tmp_path / "f.tif")
    expected = np.array([[0, 128, 255], [64, 0, 191]], np.uint8)  # rint(v * 255), NaN -> 0
    np.testing.assert_array_equal(out, np.repeat(expected[:, :, None], 3, axis=2))
    Image.fromarray(values * 200, mode="F").save(tmp_path / "g.tif")  # 0..255 floats as is
    assert load_image(tmp_path / "g.tif")[0, 2, 0] == 200


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match=r"nope\.jpg: image file not found$"):
        load_image(tmp_path / "nope.jpg")
    (tmp_path / "link.jpg").symlink_to("moved/nope.jpg")  # a link whose target moved
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / "link.jpg")
    assert str(info.value) == (f"{tmp_path / 'link.jpg'}: image file not found (a link to the "
                               "missing moved/nope.jpg)")


def test_directory(tmp_path):
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "e.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match=r"e\.jpg: image file is empty"):
        load_image(tmp_path / "e.jpg")


def test_non_image_file(tmp_path):
    (tmp_path / "notes.jpg").write_text("these are not pixels\n" * 20)
    with pytest.raises(ImageError, match=r"notes\.jpg: not a recognised image file"):
        load_image(tmp_path / "notes.jpg")


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_image(tmp_path, ext):
    big = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    path = tmp_path / f"t.{ext}"
    Image.fromarray(big).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=rf"t\.{ext}: image data is truncated or corrupt"):
        load_image(path)


def test_corrupt_image_body(tmp_path, rgb):
    path = tmp_path / "c.png"
    save_image(path, rgb)
    data = bytearray(path.read_bytes())
    data[60:120] = bytes(60)  # zero the compressed data after the header
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"c\.png: image data is truncated or corrupt"):
        load_image(path)


def test_too_large_image(tmp_path, rgb):
    save_image(tmp_path / "big.png", rgb)
    with pytest.raises(ImageError, match=r"big\.png: image is too large \(32x24 = 768 pixels"):
        load_image(tmp_path / "big.png", max_pixels=700)
    assert load_image(tmp_path / "big.png", max_pixels=768).shape == (24, 32, 3)


@pytest.mark.parametrize("ext", ["png", "tif", "gif", "jpg"])
def test_max_pixels_is_the_only_limit_not_pillows(tmp_path, monkeypatch, ext):
    # Pillow refuses over 2 * MAX_IMAGE_PIXELS (179 MP by default; 200 here, so that the
    # image stays small): max_pixels above it, or None, must still decode
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    path = tmp_path / f"x.{ext}"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(path)
    for limit in (None, 1200, 10**9):
        assert load_image(path, max_pixels=limit).shape == (30, 40, 3)
        assert decode_image(path.read_bytes(), max_pixels=limit).shape == (30, 40, 3)
    with pytest.raises(ImageTooLargeError) as refused:
        load_image(path, max_pixels=1199)
    assert str(refused.value) == (f"{path}: image is too large (40x30 = 1200 pixels, limit "
                                  "1199); refusing to decode a possible decompression bomb")
    with pytest.raises(Image.DecompressionBombError):  # Pillow's own check is left as it was
        Image.open(path)


def test_max_pixels_above_pillows_default_limit_at_real_size():
    # 13400 x 13400 = 179.56 MP, just over Pillow's 178956970: a 1-bit PNG of 22 KB, cut
    # short inside its pixel data so that nothing near that size is decoded
    buffer = io.BytesIO()
    Image.new("1", (13400, 13400)).save(buffer, "PNG")
    data = buffer.getvalue()
    data = data[:data.index(b"IDAT") + 200]
    for limit in (None, 300_000_000):  # past the size checks, to the (truncated) pixels
        with pytest.raises(ImageError) as failed:
            decode_image(data, max_pixels=limit)
        assert type(failed.value) is ImageError
        assert "image data: image data is truncated or corrupt" in str(failed.value)
    with pytest.raises(ImageTooLargeError) as refused:
        decode_image(data, max_pixels=1_000_000)
    assert str(refused.value) == ("image data: image is too large (13400x13400 = 179560000 "
                                  "pixels, limit 1000000); refusing to decode a possible "
                                  "decompression bomb")


def test_other_threads_keep_pillows_limit_during_a_decode(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    path = tmp_path / "x.png"
    Image.new("RGB", (40, 30)).save(path)
    seen = []

    def open_elsewhere(im, *args, **kwargs):  # runs in the middle of load_image's decode
        def open_it():
            try:
                Image.open(path).close()
                seen.append("opened")
            except Image.DecompressionBombError:
                seen.append("refused")
        other = threading.Thread(target=open_it)
        other.start()
        other.join()
        return exif_transpose(im, *args, **kwargs)

    exif_transpose = ImageOps.exif_transpose
    monkeypatch.setattr(imageio.ImageOps, "exif_transpose", open_elsewhere)
    assert load_image(path, max_pixels=None).shape == (30, 40, 3)
    assert seen == ["refused"]
    with pytest.raises(Image.DecompressionBombError):  # and this thread's, once it is done
        Image.open(path)


@pytest.mark.parametrize("limit", ["1000", 0, -1, 1.5, True])
def test_max_pixels_must_be_a_count_or_none(tmp_path, rgb, limit):
    save_image(tmp_path / "a.png", rgb)
    for load in (lambda: load_image(tmp_path / "a.png", max_pixels=limit),
                 lambda: decode_image((tmp_path / "a.png").read_bytes(), max_pixels=limit)):
        with pytest.raises(ConfigError) as refused:
            load()
        assert str(refused.value) == (f"max_pixels must be an integer >= 1 or None (no limit), "
                                      f"got {limit!r}")


def test_save_names_the_users_path_when_the_extension_is_missing_or_unknown(tmp_path, rgb):
    for name, what in (("out_without_suffix", "no file extension"),
                       ("a.unknownext", "unknown file extension '.unknownext'")):
        with pytest.raises(ImageError) as refused:
            save_image(tmp_path / name, rgb)
        assert str(refused.value) == (f"{tmp_path / name}: cannot save: {what} to choose the "
                                      "image format from; use an extension such as .png or .jpg")
    with pytest.raises(ImageError) as refused:
        save_image(tmp_path / "a.psd", rgb)  # read by Pillow, not written
    assert str(refused.value) == (f"{tmp_path / 'a.psd'}: cannot save: Pillow does not write "
                                  "PSD files; use an extension such as .png or .jpg")
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_save_and_encode_take_the_same_jpeg_qualities(tmp_path, rgb):
    for quality in ("high", 0, 101, 95.0, None):
        with pytest.raises(ImageError) as refused:
            save_image(tmp_path / "a.jpg", rgb, jpeg_quality=quality)
        assert str(refused.value) == (f"JPEG quality (jpeg_quality) must be an integer 1..100, "
                                      f"got {quality!r}")
        with pytest.raises(ImageError) as refused:
            encode_image(rgb, "JPEG", quality)
        assert str(refused.value) == f"quality must be an integer 1..100, got {quality!r}"
    assert list(tmp_path.iterdir()) == []
    for quality in (1, 100, np.int64(50)):
        save_image(tmp_path / "a.jpg", rgb, jpeg_quality=quality)
        assert load_image(tmp_path / "a.jpg").shape == (24, 32, 3)
        assert decode_image(encode_image(rgb, "JPEG", quality)).shape == (24, 32, 3)


def test_save_errors(tmp_path, rgb):
    with pytest.raises(ImageError, match="does not exist"):
        save_image(tmp_path / "missing" / "a.png", rgb)
    with pytest.raises(ImageError, match="cannot save"):
        save_image(tmp_path / "a.unknownext", rgb)
    with pytest.raises(ImageError, match="uint8"):
        save_image(tmp_path / "a.png", rgb.astype(np.float32))


# ------------------------------------------------------------------ drawing / anonymisation
def test_box_regions_cover_and_clip():
    regions = list(box_regions(np.array([[2.4, 3.6, 5.2, 7.0],      # generous cover
                                         [10.1, 10.1, 10.2, 10.2],  # sub-pixel box
                                         [-5, -5, 3, 2],            # clipped
                                         [50, 50, 60, 60],          # outside
                                         [np.nan, 1, 2, 3],         # skipped
                                         [8, 9, 6, 4]]), 20, 30))   # swapped corners
    assert regions == [(3, 8, 2, 7), (10, 12, 10, 12), (0, 3, 0, 4), (4, 10, 6, 9)]


@pytest.mark.parametrize("anonymise", [lambda im, b: blur_boxes(im, b, 0.5),
                                       lambda im, b: pixelate_boxes(im, b, 4),
                                       lambda im, b: pixelate_boxes(im, b)])
def test_anonymisation_changes_only_the_boxes(rgb, anonymise):
    boxes = np.array([[3.5, 2.5, 14.2, 12.8, 0.9], [25.0, 18.0, 40.0, 30.0, 0.8]])
    before = rgb.copy()
    out = anonymise(rgb, boxes)
    np.testing.assert_array_equal(rgb, before)  # input untouched
    inside = np.zeros(rgb.shape[:2], bool)
    for r0, r1, c0, c1 in box_regions(boxes, 24, 32):
        inside[r0:r1, c0:c1] = True
        region = out[r0:r1, c0:c1].astype(float)
        # detail is destroyed: much less variation than the random source pixels
        assert region.std() < 0.6 * rgb[r0:r1, c0:c1].astype(float).std()
    np.testing.assert_array_equal(out[~inside], rgb[~inside])
    assert (out[inside] != rgb[inside]).mean() > 0.9


def test_pixelate_cells_are_block_means():
    image = np.arange(6 * 6 * 3, dtype=np.uint8).reshape(6, 6, 3)
    out = pixelate_boxes(image, np.array([[0, 0, 3, 3]]), block=2)  # pixels 0..3 x 0..3
    np.testing.assert_array_equal(out[0:2, 0:2], np.broadcast_to(
        np.rint(image[0:2, 0:2].reshape(-1, 3).mean(0)).astype(np.uint8), (2, 2, 3)))
    np.testing.assert_array_equal(out[4:, :], image[4:, :])


def test_tiny_box_is_covered():
    image = np.zeros((10, 10, 3), np.uint8)
    image[4, 4] = 255
    out = pixelate_boxes(image, np.array([[4.3, 4.3, 4.6, 4.6]]), block=8)
    # the 2x2 region 4..5 x 4..5 is averaged, so the bright pixel is no longer intact
    assert out[4, 4, 0] == 64 and out[5, 5, 0] == 64


def test_draw_boxes_draws_outline_and_label(rgb):
    blank = np.zeros((60, 80, 3), np.uint8)
    out = draw_boxes(blank, np.array([[10, 20, 50, 40, 0.93], [np.nan, 0, 1, 1, 0.5]]), width=1)
    assert blank.max() == 0  # copy
    assert (out[20, 10:51] == (0, 255, 0)).all() and (out[40, 10:51] == (0, 255, 0)).all()
    assert (out[20:41, 10] == (0, 255, 0)).all()
    assert out[25:38, 12:48].max() == 0       # inside untouched
    assert out[5:19, 10:40].max() > 0         # the score label above the box
    no_label = draw_boxes(blank, np.array([[10, 20, 50, 40, 0.93]]), width=1, show_scores=False)
    assert no_label[5:19, 10:40].max() == 0
    huge = draw_boxes(blank, np.array([[-1e30, -1e30, 1e30, 1e30]]))  # no overflow
    assert huge.shape == blank.shape


def test_box_outline_grows_with_large_images():
    from tinyfaces_trt.runtime.draw import line_width

    assert line_width(480, 640) == 2 and line_width(3000, 4000) == 8
    blank = np.zeros((100, 2500, 3), np.uint8)
    out = draw_boxes(blank, np.array([[100, 20, 600, 90]]))
    edge = out[50, 95:115, 1]  # across the left edge, mid-height
    assert np.count_nonzero(edge) == line_width(100, 2500) == 5


def test_draw_rejects_bad_inputs(rgb):
    with pytest.raises(ImageError, match=r"expected an \(H, W, 3\) uint8 RGB image, got .* float32"):
        draw_boxes(rgb.astype(np.float32), np.zeros((0, 4)))
    with pytest.raises(TinyFacesError, match="boxes must be"):
        blur_boxes(rgb, np.zeros((2, 3)))
    assert np.array_equal(pixelate_boxes(rgb, np.zeros((0, 5))), rgb)
