"""prune_perception.bags: dataset <-> bag round trips, bag info, real-recorder quirks (QoS trap, metadata
versions, old sqlite schema), every bad input, and CDR interop with rclpy in both directions."""

import shutil
import sqlite3
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import Reader

from prune_perception.bags import (COMPRESSED_TOPIC, GT_TOPIC, IMAGE_TOPIC, BagWriter, bag_info, bag_to_dataset,
                                   decode_rgb, detections_from_bag_msg, detections_to_bag_msg, open_bag, typestore,
                                   write_dataset_bag)
from prune_perception.bags.messages import header_msg, image_msg
from prune_perception.bags.typestore import DETECTION2D_ARRAY, IMAGE, serialize
from prune_perception.bags.dataset_bag import DEFAULT_START_STAMP_NS, frame_stamp_ns
from prune_perception.data.dataset import load_dataset, read_image_rgb
from prune_perception.errors import BagError, DatasetError, InputImageError

SPLIT = "val"  # tiny_synth's val split: 10 images
FPS = 10.0
STORAGES = ["mcap", "sqlite3"]
TRANSPORTS = ["raw", "compressed"]


@pytest.fixture(scope="module")
def source(tiny_synth):
    return load_dataset(tiny_synth, SPLIT)


@pytest.fixture(scope="module")
def bags(tiny_synth, tmp_path_factory):
    """One dataset bag per (storage, transport), written once for the module."""
    root = tmp_path_factory.mktemp("bags")
    return {(storage, transport): write_dataset_bag(tiny_synth, SPLIT, root / f"{storage}_{transport}", fps=FPS,
                                                    transport=transport, storage=storage, progress=False)
            for storage in STORAGES for transport in TRANSPORTS}


def copy_bag(bag: Path, target: Path) -> Path:
    shutil.copytree(bag, target)
    return target


def storage_file(bag: Path) -> Path:
    return next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))


def edit_metadata(bag: Path, edit) -> None:
    path = bag / "metadata.yaml"
    document = yaml.safe_load(path.read_text())
    edit(document["rosbag2_bagfile_information"])
    path.write_text(yaml.safe_dump(document))


def image_only_bag(path: Path, count: int = 3, topic: str = IMAGE_TOPIC, storage: str = "mcap") -> Path:
    """A bag with ``count`` small rgb8 frames on ``topic`` and nothing else."""
    with BagWriter(path, storage=storage) as writer:
        for i in range(count):
            stamp = DEFAULT_START_STAMP_NS + i * 100_000_000
            image = np.full((8, 12, 3), 10 * i, np.uint8)
            writer.write_message(topic, image_msg(image, "rgb8", header_msg(stamp, "camera")), stamp)
    return path


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_write_read_round_trip(bags, source, storage, transport):
    summary = bags[storage, transport]
    assert summary.frames == len(source) == 10
    assert summary.counts == {summary.image_topic: 10, GT_TOPIC: 10}
    assert summary.image_topic == (IMAGE_TOPIC if transport == "raw" else COMPRESSED_TOPIC)
    with open_bag(summary.path) as bag:  # image topic auto-detected
        assert (bag.image_topic, bag.transport, bag.gt_topic) == (summary.image_topic, transport, GT_TOPIC)
        assert bag.classes == list(source.classes)
        frames = list(bag.frames())
        ground_truth = bag.ground_truth()
    stamps = [frame_stamp_ns(i, FPS, DEFAULT_START_STAMP_NS) for i in range(10)]
    assert [f.stamp_ns for f in frames] == stamps
    assert [f.log_time_ns for f in frames] == stamps
    assert sorted(ground_truth) == stamps
    for frame, sample in zip(frames, source.samples):
        expected = read_image_rgb(sample.image_path)
        if transport == "raw":
            image, order = frame.image()
            assert order == "rgb" and frame.msg.encoding == "rgb8"
            np.testing.assert_array_equal(image, expected)  # pixels identical
        else:  # the source JPEG embedded byte for byte
            assert bytes(frame.msg.data) == sample.image_path.read_bytes()
            np.testing.assert_array_equal(decode_rgb(frame.msg), expected)
        truth = ground_truth[frame.stamp_ns]
        np.testing.assert_allclose(truth.boxes, sample.boxes, atol=1e-4)
        assert truth.class_names == [source.classes[label] for label in sample.labels]
        assert (truth.scores == 1.0).all()


@pytest.mark.parametrize("encoding", ["bgr8", "mono8", "rgba8"])
def test_raw_encodings(tiny_synth, source, tmp_path, encoding):
    summary = write_dataset_bag(tiny_synth, SPLIT, tmp_path / "bag", encoding=encoding, storage="sqlite3",
                                progress=False)
    with open_bag(summary.path) as bag:
        frame = next(bag.frames())
    assert frame.msg.encoding == encoding
    expected = read_image_rgb(source.samples[0].image_path)
    if encoding == "mono8":
        assert frame.image()[0].shape == expected.shape[:2]
    else:
        np.testing.assert_array_equal(decode_rgb(frame.msg), expected)


def test_detections_msg_round_trip():
    boxes = np.array([[1.5, 2.0, 30.25, 40.0], [0, 0, 5, 5]], np.float32)
    msg = detections_to_bag_msg(DEFAULT_START_STAMP_NS + 7, "cam", boxes, ["car", "truck"], [0.9, 0.4])
    back = detections_from_bag_msg(typestore().deserialize_cdr(serialize(msg), DETECTION2D_ARRAY))
    np.testing.assert_allclose(back.boxes, boxes)
    assert back.class_names == ["car", "truck"]
    np.testing.assert_allclose(back.scores, [0.9, 0.4])
    empty = detections_from_bag_msg(detections_to_bag_msg(0, "cam", np.zeros((0, 4)), []))
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)
    with pytest.raises(BagError, match="same length"):
        detections_to_bag_msg(0, "cam", boxes, ["car"])


def test_bag_info(bags):
    summary = bags["mcap", "raw"]
    info = bag_info(summary.path)
    assert (info.storage, info.version, info.message_count) == ("mcap", 8, 20)
    assert info.start_ns == DEFAULT_START_STAMP_NS and info.end_ns == summary.end_ns
    assert info.duration_s == pytest.approx(0.9)
    assert {t.name: (t.msgtype, t.count) for t in info.topics} == {
        IMAGE_TOPIC: (IMAGE, 10), GT_TOPIC: (DETECTION2D_ARRAY, 10)}
    assert all(t.rate_hz == pytest.approx(FPS) for t in info.topics)
    assert info.size_bytes > 10 * 320 * 192 * 3
    text, markdown = info.to_text(), info.to_markdown()
    for rendered in (text, markdown):
        assert IMAGE_TOPIC in rendered and "10.00" in rendered and "0.900 s" in rendered
    assert "| Topic | Type | Count | Rate (Hz) |" in markdown
    assert info.as_dict()["topics"][0]["rate_hz"] == pytest.approx(FPS)
    quick = bag_info(bags["sqlite3", "compressed"].path, scan=False)
    assert quick.message_count == 20 and quick.topics[0].rate_hz is None


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bag_to_dataset_round_trip(bags, source, tmp_path, transport):
    summary = bags["sqlite3", transport]
    export = bag_to_dataset(summary.path, tmp_path / "ds", progress=False)
    assert (export.images, export.broken_frames, export.frames_without_ground_truth) == (10, 0, 0)
    dataset = load_dataset(tmp_path / "ds", SPLIT)
    assert dataset.classes == source.classes and len(dataset) == len(source)
    for got, want in zip(dataset.samples, source.samples):
        assert (got.width, got.height) == (want.width, want.height)
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)  # COCO json keeps 3 decimals
        np.testing.assert_array_equal(got.labels, want.labels)
        if transport == "raw":  # lossless PNG of the decoded source
            assert got.image_path.suffix == ".png"
            np.testing.assert_array_equal(read_image_rgb(got.image_path), read_image_rgb(want.image_path))
        else:  # JPEG bytes kept as they are
            assert got.image_path.read_bytes() == want.image_path.read_bytes()
    # ... and back into a bag: same frames again
    again = write_dataset_bag(tmp_path / "ds", SPLIT, tmp_path / "again", transport=transport, progress=False)
    with open_bag(summary.path) as first, open_bag(again.path) as second:
        for a, b in zip(first.frames(), second.frames(), strict=True):
            np.testing.assert_array_equal(a.image()[0], b.image()[0])
    with pytest.raises(BagError, match="already exists"):
        bag_to_dataset(summary.path, tmp_path / "ds", progress=False)


def test_bag_without_ground_truth(tmp_path):
    path = image_only_bag(tmp_path / "bag", topic="/front/image")
    with open_bag(path) as bag:
        assert (bag.image_topic, bag.gt_topic, bag.frame_count) == ("/front/image", None, 3)
        assert bag.ground_truth() == {} and len(list(bag.frames())) == 3
    with pytest.raises(BagError, match="ground-truth topic /gt is not in the bag"):
        open_bag(path, gt_topic="/gt")
    with pytest.raises(BagError, match="no ground-truth topic"):
        bag_to_dataset(path, tmp_path / "ds", progress=False)
    export = bag_to_dataset(path, tmp_path / "ds", require_ground_truth=False, classes=["car"], progress=False)
    assert (export.images, export.boxes) == (3, 0)
    assert len(load_dataset(tmp_path / "ds", SPLIT)) == 3


# --------------------------------------------------------------------------- real-recorder quirks


def _change_qos(info, topic):
    for entry in info["topics_with_message_count"]:
        meta = entry["topic_metadata"]
        if meta["name"] == topic:
            qos = meta["offered_qos_profiles"]
            if isinstance(qos, str):  # version <= 8: a YAML string with enum numbers
                assert "reliability: 1" in qos
                meta["offered_qos_profiles"] = qos.replace("reliability: 1", "reliability: 2")
            else:  # version 9: a list of mappings
                qos[0]["reliability"] = "best_effort"


@pytest.mark.parametrize("storage, version", [("mcap", 8), ("sqlite3", 8), ("mcap", 9)])
def test_metadata_qos_mismatch_recovered(tmp_path, storage, version):
    path = tmp_path / "bag"
    with BagWriter(path, storage=storage, version=version) as writer:
        for i in range(5):
            stamp = DEFAULT_START_STAMP_NS + i * 100_000_000
            writer.write_message(IMAGE_TOPIC, image_msg(np.full((4, 6, 3), i, np.uint8), "rgb8",
                                                        header_msg(stamp, "camera")), stamp)
            writer.write_message(GT_TOPIC, detections_to_bag_msg(stamp, "camera", [[0, 0, 2, 2]], ["car"]), stamp)
    edit_metadata(path, lambda info: _change_qos(info, IMAGE_TOPIC))
    with Reader(path) as plain:  # the trap: plain rosbags silently yields nothing for that topic
        assert Counter(c.topic for c, _, _ in plain.messages()) == {GT_TOPIC: 5}
    with open_bag(path) as bag:
        assert bag.raw.qos_mismatch_topics == [IMAGE_TOPIC]
        assert len(list(bag.frames())) == 5 and len(bag.ground_truth()) == 5
    info = bag_info(path)
    assert [t.count for t in info.topics] == [5, 5] and any("offered QoS" in note for note in info.notes)


@pytest.mark.parametrize("version", [4, 5, 6, 7, 8])
def test_older_metadata_versions(bags, tmp_path, version):
    path = copy_bag(bags["mcap", "compressed"].path, tmp_path / "bag")

    def downgrade(info):
        info["version"] = version
        if version < 8:
            info.pop("ros_distro")
        if version < 7:
            for entry in info["topics_with_message_count"]:
                entry["topic_metadata"].pop("type_description_hash")
        if version < 6:
            info.pop("custom_data")
        if version < 5:
            info.pop("files")
    edit_metadata(path, downgrade)
    with open_bag(path) as bag:
        assert bag.raw.version == version and len(list(bag.frames())) == 10 and len(bag.ground_truth()) == 10


def test_humble_style_sqlite_bag(bags, tmp_path):
    """sqlite schema 3 (no message definitions, no type hashes) + metadata version 5, as Humble records."""
    path = copy_bag(bags["sqlite3", "raw"].path, tmp_path / "bag")
    with sqlite3.connect(storage_file(path)) as db:
        db.executescript("DROP TABLE message_definitions; DROP TABLE metadata; "
                         "ALTER TABLE topics DROP COLUMN type_description_hash; UPDATE schema SET schema_version = 3;")
    db.close()

    def humble(info):
        info["version"] = 5
        del info["custom_data"], info["ros_distro"]
        for entry in info["topics_with_message_count"]:
            del entry["topic_metadata"]["type_description_hash"]
    edit_metadata(path, humble)
    with open_bag(path) as bag:
        assert bag.raw.version == 5 and bag.classes is None  # no custom_data before version 6
        assert len(list(bag.frames())) == 10 and len(bag.ground_truth()) == 10


@pytest.mark.parametrize("mode", ["MESSAGE", "FILE"])
def test_zstd_compressed_bag(tmp_path, mode):
    """Bags recorded with ``--compression-mode message|file --compression-format zstd``."""
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, Writer

    path = tmp_path / "bag"
    writer = Writer(path, version=8)
    writer.set_compression(CompressionMode[mode], CompressionFormat.ZSTD)
    with writer:
        connection = writer.add_connection(IMAGE_TOPIC, IMAGE, typestore=typestore())
        for i in range(4):
            stamp = DEFAULT_START_STAMP_NS + i
            msg = image_msg(np.full((4, 4, 3), i, np.uint8), "rgb8", header_msg(stamp, "camera"))
            writer.write(connection, stamp, serialize(msg))
    with open_bag(path) as bag:
        assert [int(f.image()[0][0, 0, 0]) for f in bag.frames()] == [0, 1, 2, 3]


def test_declared_count_differs(bags, tmp_path):
    path = copy_bag(bags["mcap", "raw"].path, tmp_path / "bag")

    def overstate(info):
        info["topics_with_message_count"][0]["message_count"] = 12
    edit_metadata(path, overstate)
    with open_bag(path) as bag:
        assert len(list(bag.frames())) == 10
        assert any("declares 12 messages, the storage holds 10" in note for note in bag.raw.notes)


# --------------------------------------------------------------------------- bad input


def test_missing_bag_and_metadata(bags, tmp_path):
    with pytest.raises(BagError, match="bag not found"):
        open_bag(tmp_path / "nothing")
    path = copy_bag(bags["sqlite3", "raw"].path, tmp_path / "bag")
    (path / "metadata.yaml").unlink()
    with pytest.raises(BagError, match=r"metadata.yaml is missing .*ros2 bag reindex"):
        open_bag(path)
    with pytest.raises(BagError, match="metadata.yaml is missing"):
        bag_info(path)


@pytest.mark.parametrize("storage", STORAGES)
def test_truncated_storage(bags, tmp_path, storage):
    path = copy_bag(bags[storage, "raw"].path, tmp_path / "bag")
    data = storage_file(path)
    with data.open("r+b") as handle:
        handle.truncate(data.stat().st_size // 2)
    with pytest.raises(BagError, match=r"truncated or corrupt"):
        open_bag(path)


def test_storage_file_path_opens_its_bag(bags):
    path = bags["mcap", "raw"].path
    with open_bag(storage_file(path)) as bag:
        assert bag.path == path


def test_unsupported_serialization(bags, tmp_path):
    path = copy_bag(bags["mcap", "raw"].path, tmp_path / "bag")

    def ros1(info):
        info["topics_with_message_count"][1]["topic_metadata"]["serialization_format"] = "ros1"
    edit_metadata(path, ros1)
    with pytest.raises(BagError, match=f"unsupported serialization format on {GT_TOPIC} \\(ros1\\)"):
        open_bag(path)


def test_wrong_topic_types(tmp_path):
    path = tmp_path / "bag"
    string = typestore().types["std_msgs/msg/String"]
    with BagWriter(path) as writer:
        writer.write_message("/camera/info", string(data="not an image"), 1)
        writer.write_message(GT_TOPIC, string(data="not detections"), 1)
    with pytest.raises(BagError, match="found none among /camera/info"):
        open_bag(path)
    with pytest.raises(BagError, match="image topic /camera/info holds std_msgs/msg/String"):
        open_bag(path, image_topic="/camera/info")
    with BagWriter(tmp_path / "bad_gt") as writer:
        header = header_msg(DEFAULT_START_STAMP_NS, "camera")
        writer.write_message(IMAGE_TOPIC, image_msg(np.zeros((2, 2, 3), np.uint8), "rgb8", header), 1)
        writer.write_message(GT_TOPIC, string(data="x"), 1)
    with pytest.raises(BagError, match=f"ground-truth topic {GT_TOPIC} holds std_msgs/msg/String"):
        open_bag(tmp_path / "bad_gt")


def test_several_image_topics_need_a_choice(tmp_path):
    path = tmp_path / "bag"
    with BagWriter(path) as writer:
        for topic in ("/left/image_raw", "/right/image_raw"):
            writer.write_message(topic, image_msg(np.zeros((2, 2), np.uint8), "mono8", header_msg(5, "cam")), 5)
    with pytest.raises(BagError, match="several: /left/image_raw, /right/image_raw"):
        open_bag(path)
    with pytest.raises(BagError, match=r"image topic /camera/image_raw is not in the bag \(image topics: /left"):
        open_bag(path, image_topic=IMAGE_TOPIC)
    with open_bag(path, image_topic="/right/image_raw") as bag:
        assert [f.stamp_ns for f in bag.frames()] == [5]


def test_empty_bag(tmp_path):
    path = tmp_path / "bag"
    with BagWriter(path) as writer:
        writer.add_topic(IMAGE_TOPIC, IMAGE)
    with pytest.raises(BagError, match="the bag is empty"):
        open_bag(path)
    info = bag_info(path)
    assert info.message_count == 0 and info.topics[0].count == 0 and info.duration_s == 0.0


def test_broken_messages_are_frames_not_reader_errors(tmp_path):
    path = tmp_path / "bag"
    with BagWriter(path) as writer:
        good = image_msg(np.zeros((4, 6, 3), np.uint8), "rgb8", header_msg(100, "cam"))
        bad = image_msg(np.zeros((4, 6, 3), np.uint8), "rgb8", header_msg(200, "cam"))
        bad.step = 5  # smaller than one row
        writer.write_message(IMAGE_TOPIC, good, 100)
        writer.write_message(IMAGE_TOPIC, bad, 200)
        writer.write(IMAGE_TOPIC, IMAGE, b"\x00\x01\x00\x00garbage", 300)  # not even CDR of an Image
        for stamp in (100, 200, 300):
            writer.write_message(GT_TOPIC, detections_to_bag_msg(stamp, "cam", [[0, 0, 2, 2]], ["car"]), stamp)
    with open_bag(path) as bag:
        frames = list(bag.frames())
    assert [f.stamp_ns for f in frames] == [100, 200, 300]
    frames[0].image()
    with pytest.raises(InputImageError, match="step 5 is smaller than one row"):
        frames[1].image()
    assert frames[2].msg is None
    with pytest.raises(InputImageError, match="cannot be deserialized"):
        frames[2].image()
    export = bag_to_dataset(path, tmp_path / "ds", classes=["car"], progress=False)
    assert (export.images, export.broken_frames) == (1, 2)


def test_never_overwrites(bags, tiny_synth, tmp_path):
    existing = bags["mcap", "raw"].path
    with pytest.raises(BagError, match="already exists"):
        write_dataset_bag(tiny_synth, SPLIT, existing, progress=False)
    with pytest.raises(BagError, match="already exists"):
        BagWriter(existing)
    assert (existing / "metadata.yaml").is_file()


def test_bad_options_and_half_written_bag_removed(tiny_synth, tmp_path):
    for options, message in [({"fps": 0}, "fps"), ({"transport": "theora"}, "transport"),
                             ({"storage": "bag"}, "storage"), ({"encoding": "yuv"}, "encoding")]:
        with pytest.raises(BagError, match=message):
            write_dataset_bag(tiny_synth, SPLIT, tmp_path / "bag", progress=False, **options)
    broken = tmp_path / "ds"
    shutil.copytree(tiny_synth, broken)
    victim = sorted((broken / "images" / SPLIT).iterdir())[3]
    victim.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="cannot decode image"):
        write_dataset_bag(broken, SPLIT, tmp_path / "bag", progress=False)
    assert not (tmp_path / "bag").exists()


def test_type_hash_mismatch(tmp_path):
    path = image_only_bag(tmp_path / "bag")
    other = tmp_path / "other"
    with BagWriter(other) as writer:
        stamp = DEFAULT_START_STAMP_NS
        writer.write_message(IMAGE_TOPIC, image_msg(np.zeros((2, 2, 3), np.uint8), "rgb8", header_msg(stamp, "c")),
                             stamp)
        msgdef, _ = typestore().generate_msgdef(DETECTION2D_ARRAY, ros_version=2)
        writer.add_topic(GT_TOPIC, DETECTION2D_ARRAY, msgdef=msgdef, type_hash="RIHS01_" + "0" * 64)
        writer.write_message(GT_TOPIC, detections_to_bag_msg(stamp, "c", [[0, 0, 1, 1]], ["car"]), stamp)
    assert open_bag(path).gt_topic is None
    with pytest.raises(BagError, match="definition .* differs from the one this package reads"):
        open_bag(other)


def test_unknown_type_needs_definition(tmp_path):
    with BagWriter(tmp_path / "bag") as writer, pytest.raises(BagError, match="unknown to the bag typestore"):
        writer.write("/x", "my_msgs/msg/Thing", b"\x00\x01\x00\x00", 1)


# --------------------------------------------------------------------------- rclpy interop


def test_type_hashes_match_rosidl():
    import json

    for msgtype in (DETECTION2D_ARRAY, IMAGE):
        package, _, name = msgtype.split("/")
        path = Path(sys.prefix) / "share" / package / "msg" / f"{name}.json"
        if not path.is_file():
            pytest.skip(f"{path} not installed")
        hashes = json.loads(path.read_text())["type_hashes"]
        assert typestore().hash_rihs01(msgtype) == next(h["hash_string"] for h in hashes
                                                         if h["type_name"] == msgtype)


def test_rosbags_bag_read_by_rclpy(bags, source):
    serialization = pytest.importorskip("rclpy.serialization")
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    vision_msgs = pytest.importorskip("vision_msgs.msg")
    from prune_perception.bags.raw_bag import RawBag

    classes = {"/camera/image_raw": sensor_msgs.Image, GT_TOPIC: vision_msgs.Detection2DArray}
    with RawBag(bags["mcap", "raw"].path) as bag:
        messages = [(topic, serialization.deserialize_message(data, classes[topic]))
                    for topic, _, _, data in bag.messages(classes)]
    images = [m for t, m in messages if t == IMAGE_TOPIC]
    truths = [m for t, m in messages if t == GT_TOPIC]
    assert len(images) == len(truths) == 10
    for image, truth, sample in zip(images, truths, source.samples):
        assert image.header.stamp == truth.header.stamp and image.encoding == "rgb8"
        pixels = np.frombuffer(bytes(image.data), np.uint8).reshape(image.height, image.width, 3)
        np.testing.assert_array_equal(pixels, read_image_rgb(sample.image_path))
        got = detections_from_bag_msg(truth)  # works on rclpy messages too
        np.testing.assert_allclose(got.boxes, sample.boxes, atol=1e-4)
        assert got.class_names == [source.classes[label] for label in sample.labels]


def test_rclpy_cdr_written_by_raw_writer(tmp_path):
    serialization = pytest.importorskip("rclpy.serialization")
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    vision_msgs = pytest.importorskip("vision_msgs.msg")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (6, 10, 3), dtype=np.uint8)
    jpeg = cv2.imencode(".jpg", pixels)[1].tobytes()
    path = tmp_path / "bag"
    with BagWriter(path, storage="sqlite3") as writer:
        for i in range(3):
            stamp = DEFAULT_START_STAMP_NS + i * 50_000_000
            image = sensor_msgs.CompressedImage(format="jpeg", data=jpeg)
            image.header.stamp.sec, image.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            detections = vision_msgs.Detection2DArray(header=image.header)
            detection = vision_msgs.Detection2D(header=image.header)
            detection.bbox.center.position.x, detection.bbox.center.position.y = 5.0, 3.0
            detection.bbox.size_x, detection.bbox.size_y = 4.0, 2.0
            hypothesis = vision_msgs.ObjectHypothesisWithPose()
            hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = "pedestrian", 0.75
            detection.results.append(hypothesis)
            detections.detections.append(detection)
            writer.write(COMPRESSED_TOPIC, "sensor_msgs/msg/CompressedImage", serialization.serialize_message(image),
                         stamp + 1000)
            writer.write(GT_TOPIC, DETECTION2D_ARRAY, serialization.serialize_message(detections), stamp + 2000)
    with open_bag(path) as bag:
        frames = list(bag.frames())
        truth = bag.ground_truth()
    assert [f.log_time_ns - f.stamp_ns for f in frames] == [1000] * 3
    for frame in frames:
        assert bytes(frame.msg.data) == jpeg
        np.testing.assert_array_equal(frame.image()[0], cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
        boxes = truth[frame.stamp_ns]
        np.testing.assert_allclose(boxes.boxes, [[3.0, 2.0, 7.0, 4.0]])
        assert boxes.class_names == ["pedestrian"] and boxes.scores[0] == pytest.approx(0.75)
