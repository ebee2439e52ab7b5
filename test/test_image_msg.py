"""sensor_msgs/Image and CompressedImage <-> numpy (runtime/image_msg.py), on plain objects and real rclpy messages."""

import array
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CompressedImage, Image

from prune_perception.errors import InputImageError
from prune_perception.runtime.image_msg import (RAW_ENCODINGS, compressed_data, convert_color, image_from_msg,
                                                image_to_msg_fields)

# Written out independently of RAW_ENCODINGS: (channels, dtype, color order) as REP-118 / cv_bridge define them.
EXPECTED_LAYOUT = {
    "rgb8": (3, np.uint8, "rgb"), "bgr8": (3, np.uint8, "bgr"), "rgba8": (4, np.uint8, "rgb"),
    "bgra8": (4, np.uint8, "bgr"), "mono8": (1, np.uint8, "rgb"), "mono16": (1, np.uint16, "rgb"),
    "8UC1": (1, np.uint8, "rgb"), "8UC3": (3, np.uint8, "bgr"), "16UC1": (1, np.uint16, "rgb"),
}
ENCODINGS = sorted(EXPECTED_LAYOUT)


def plain_msg(**fields):
    """A duck-typed Image: just the fields."""
    return SimpleNamespace(**fields)


def rclpy_msg(**fields):
    """A real sensor_msgs/Image (data as array.array('B'), as rclpy stores it)."""
    msg = Image()
    for name, value in fields.items():
        setattr(msg, name, array.array("B", value) if name == "data" else value)
    return msg


MESSAGE_KINDS = pytest.mark.parametrize("make_msg", [plain_msg, rclpy_msg], ids=["plain", "rclpy"])


def random_pixels(encoding, height, width, seed=0):
    channels, dtype, _ = EXPECTED_LAYOUT[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


def serialize(pixels, padding=0, big_endian=False, pad_byte=0xEE):
    """Image fields built by hand: each row's pixels in the given byte order, then ``padding`` filler bytes."""
    height, width = pixels.shape[:2]
    ordered = pixels.astype(pixels.dtype.newbyteorder(">" if big_endian else "<"))
    rows = [ordered[y].tobytes() + bytes([pad_byte]) * padding for y in range(height)]
    row_bytes = len(ordered[0].tobytes())
    return {"height": height, "width": width, "step": row_bytes + padding, "is_bigendian": int(big_endian),
            "data": b"".join(rows)}


def test_expected_layout_table_covers_every_supported_encoding():
    """The independent table above must list exactly the supported encodings (else tests miss one)."""
    assert set(EXPECTED_LAYOUT) == set(RAW_ENCODINGS)


@MESSAGE_KINDS
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_round_trip_gives_identical_pixels_and_color_order(encoding, make_msg):
    """image_to_msg_fields -> message -> image_from_msg returns the same pixels, shape, dtype and color order."""
    pixels = random_pixels(encoding, 5, 7, seed=len(encoding))
    fields = image_to_msg_fields(pixels, encoding)
    channels, dtype, order = EXPECTED_LAYOUT[encoding]
    assert fields["step"] == 7 * channels * np.dtype(dtype).itemsize
    assert fields["is_bigendian"] == int(sys.byteorder == "big")
    image, color_order = image_from_msg(make_msg(**fields))
    assert color_order == order
    assert image.dtype == dtype and image.shape == pixels.shape
    np.testing.assert_array_equal(image, pixels)


@MESSAGE_KINDS
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_padded_rows_are_cut_to_the_pixels(encoding, make_msg):
    """step > row bytes: the padding at the end of each row is not part of the image."""
    pixels = random_pixels(encoding, 4, 3, seed=1)
    fields = serialize(pixels, padding=6, big_endian=sys.byteorder == "big")
    image, _ = image_from_msg(make_msg(encoding=encoding, **fields))
    assert image.shape == pixels.shape
    np.testing.assert_array_equal(image, pixels)


@MESSAGE_KINDS
@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
def test_16_bit_big_and_little_endian_give_the_same_values(encoding, make_msg):
    """is_bigendian decides the byte order of 16-bit pixels; the result is native uint16 either way."""
    pixels = np.array([[0x0102, 0xFFFE, 0x8000], [0, 1, 0x00FF]], np.uint16)
    big = serialize(pixels, padding=2, big_endian=True)
    little = serialize(pixels, padding=2, big_endian=False)
    assert big["data"] != little["data"]
    for fields in (big, little):
        image, _ = image_from_msg(make_msg(encoding=encoding, **fields))
        assert image.dtype.isnative and image.dtype == np.uint16
        np.testing.assert_array_equal(image, pixels)


RGB_PIXELS = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [10, 20, 30]]], np.uint8)
GRAY = np.array([[76, 150, 29, 255, 18]])
"""round(0.299 R + 0.587 G + 0.114 B) of RGB_PIXELS (ITU-R BT.601 luma)."""
CONVERTED = {
    "rgb8": RGB_PIXELS,
    "bgr8": RGB_PIXELS[..., ::-1],
    "8UC3": RGB_PIXELS[..., ::-1],
    "rgba8": np.concatenate([RGB_PIXELS, np.full((1, 5, 1), 255)], axis=2),
    "bgra8": np.concatenate([RGB_PIXELS[..., ::-1], np.full((1, 5, 1), 255)], axis=2),
    "mono8": GRAY,
    "8UC1": GRAY,
    "mono16": GRAY * 257,
    "16UC1": GRAY * 257,
}


def test_converted_table_covers_every_supported_encoding():
    assert set(CONVERTED) == set(RAW_ENCODINGS)


@pytest.mark.parametrize("source_order", ["rgb", "bgr"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_convert_color_lays_out_pixels_for_the_encoding(encoding, source_order):
    """Channel swap for bgr, alpha 255 for 4-channel, BT.601 luma for mono (x257 for 16 bit), from either order."""
    source = RGB_PIXELS if source_order == "rgb" else np.ascontiguousarray(RGB_PIXELS[..., ::-1])
    converted = convert_color(source, source_order, encoding)
    assert converted.dtype == EXPECTED_LAYOUT[encoding][1]
    np.testing.assert_array_equal(converted, CONVERTED[encoding])
    # ... and it is exactly what image_to_msg_fields expects for that encoding.
    image, _ = image_from_msg(plain_msg(**image_to_msg_fields(converted, encoding)))
    np.testing.assert_array_equal(image, converted)


def _rgb8(**changes):
    fields = {"encoding": "rgb8", "height": 2, "width": 3, "step": 9, "is_bigendian": 0, "data": bytes(18)}
    fields.update(changes)
    return fields


MALFORMED = [
    pytest.param(_rgb8(encoding="yuv422"), None, r"unsupported image encoding 'yuv422' \(supported: rgb8, bgr8",
                 id="unknown-encoding"),
    pytest.param(_rgb8(width=0, height=0, step=0, data=b""), None, r"image is 0x0: width and height must be > 0",
                 id="0x0"),
    pytest.param(_rgb8(width=0, height=4, step=0, data=b""), None, r"image is 0x4: width and height must be > 0",
                 id="0xN"),
    pytest.param(_rgb8(step=8, data=bytes(16)), None,
                 r"rgb8 image 3x2: step 8 is smaller than one row \(3 px x 3 bytes = 9\)", id="step-too-small"),
    pytest.param(_rgb8(encoding="mono16", step=7, data=bytes(14)), None,
                 r"mono16 image: step 7 is not a multiple of the 2-byte pixel component", id="mono16-odd-step"),
    pytest.param(_rgb8(data=bytes(17)), None,
                 r"rgb8 image 3x2, step 9: data has 17 bytes, expected step x height = 18 \(truncated\)",
                 id="truncated"),
    pytest.param(_rgb8(data=bytes(27)), None,
                 r"rgb8 image 3x2, step 9: data has 27 bytes, expected step x height = 18 \(too long\)",
                 id="too-long"),
    pytest.param(_rgb8(), 5, r"image is 3x2 = 6 pixels, over the limit of 5 \(max_image_pixels\)",
                 id="over-max-pixels"),
]


@MESSAGE_KINDS
@pytest.mark.parametrize("fields, max_pixels, message", MALFORMED)
def test_malformed_image_is_refused_with_a_clear_message(fields, max_pixels, message, make_msg):
    kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
    with pytest.raises(InputImageError, match=message):
        image_from_msg(make_msg(**fields), **kwargs)


def test_negative_size_from_a_plain_object_is_refused():
    """rclpy's uint32 fields cannot hold it, other message sources (plain objects) can."""
    with pytest.raises(InputImageError, match=r"image is 3x-1: width and height must be > 0"):
        image_from_msg(plain_msg(**_rgb8(height=-1)))


def test_image_at_exactly_max_pixels_is_accepted():
    image, _ = image_from_msg(plain_msg(**_rgb8()), max_pixels=6)
    assert image.shape == (2, 3, 3)


@pytest.mark.parametrize("image, encoding, message", [
    (np.zeros((2, 2, 3), np.uint8), "yuv422", r"unsupported image encoding 'yuv422'"),
    (np.zeros((2, 2, 3), np.uint16), "rgb8", r"rgb8 needs a uint8 array with 3 channel\(s\), got uint16 \[2, 2, 3\]"),
    (np.zeros((2, 2, 4), np.uint8), "bgr8", r"bgr8 needs a uint8 array with 3 channel\(s\), got uint8 \[2, 2, 4\]"),
    (np.zeros((2, 2, 1), np.uint8), "mono8", r"mono8 needs a uint8 array with 1 channel\(s\), got uint8 \[2, 2, 1\]"),
    (np.zeros((2, 2), np.uint8), "mono16", r"mono16 needs a uint16 array with 1 channel\(s\), got uint8 \[2, 2\]"),
])
def test_image_to_msg_fields_refuses_an_array_not_in_the_encoding_layout(image, encoding, message):
    with pytest.raises(InputImageError, match=message):
        image_to_msg_fields(image, encoding)


def test_convert_color_refuses_an_unknown_encoding():
    with pytest.raises(InputImageError, match=r"unsupported image encoding 'nv12'"):
        convert_color(RGB_PIXELS, "rgb", "nv12")


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(encoding=st.sampled_from(ENCODINGS), height=st.integers(1, 64), width=st.integers(1, 64),
       padding=st.integers(-3, 7), big_endian=st.booleans(), length_change=st.integers(-5, 5),
       seed=st.integers(0, 2**32 - 1))
def test_any_image_header_gives_the_right_pixels_or_an_input_image_error(encoding, height, width, padding,
                                                                         big_endian, length_change, seed):
    """Random sizes, row paddings (negative: step too small), byte orders and truncated/extended data:
    a consistent message decodes to exactly its pixels, any other raises InputImageError, never anything else."""
    pixels = random_pixels(encoding, height, width, seed)
    fields = serialize(pixels, padding=max(padding, 0), big_endian=big_endian)
    fields["step"] += min(padding, 0)
    data = fields["data"]
    fields["data"] = data[:len(data) + length_change] if length_change < 0 else data + bytes(length_change)
    itemsize = np.dtype(EXPECTED_LAYOUT[encoding][1]).itemsize
    consistent = padding >= 0 and padding % itemsize == 0 and length_change == 0
    msg = plain_msg(encoding=encoding, **fields)
    if consistent:
        image, color_order = image_from_msg(msg)
        assert color_order == EXPECTED_LAYOUT[encoding][2]
        np.testing.assert_array_equal(image, pixels)
    else:
        with pytest.raises(InputImageError):
            image_from_msg(msg)


@pytest.mark.parametrize("make_msg", [
    lambda data: SimpleNamespace(format="jpeg", data=data),
    lambda data: CompressedImage(format="jpeg", data=array.array("B", data)),
], ids=["plain", "rclpy"])
def test_compressed_data_returns_the_encoded_bytes(make_msg):
    payload = b"\xff\xd8\xff\xe0 jpeg bytes \xff\xd9"
    assert bytes(compressed_data(make_msg(payload))) == payload


def test_compressed_data_returns_bytes_without_a_copy():
    payload = b"\x89PNG\r\n\x1a\n"
    assert compressed_data(SimpleNamespace(format="png", data=payload)) is payload


@pytest.mark.parametrize("msg, message", [
    (SimpleNamespace(format="jpeg", data=b""), r"compressed image \(jpeg\) has no data"),
    (SimpleNamespace(format="", data=b""), r"compressed image \(no format\) has no data"),
    (CompressedImage(format="png"), r"compressed image \(png\) has no data"),
], ids=["plain", "no-format", "rclpy"])
def test_compressed_data_refuses_an_empty_message(msg, message):
    with pytest.raises(InputImageError, match=message):
        compressed_data(msg)
