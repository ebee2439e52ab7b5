"""The rosbags typestore used for every bag: ROS 2 Kilted's messages plus vision_msgs 4.1.1.

rosbags ships no vision_msgs, so they are registered from the ``.msg`` definitions packaged next to
this module (``vision_msgs_msg/``). Their RIHS01 hashes equal the ones rclpy's vision_msgs build
reports, so bags written here carry the same ``type_description_hash`` as a rosbag2 recording.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from prune_perception.errors import BagError

VISION_MSGS_DIR = Path(__file__).with_name("vision_msgs_msg")

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
DETECTION2D_ARRAY = "vision_msgs/msg/Detection2DArray"
DIAGNOSTIC_ARRAY = "diagnostic_msgs/msg/DiagnosticArray"
CLOCK = "rosgraph_msgs/msg/Clock"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)


@functools.cache
def typestore() -> Typestore:
    """The shared typestore (built once): Kilted's standard messages + vision_msgs."""
    store = get_typestore(Stores.ROS2_KILTED)
    types: dict[str, Any] = {}
    for path in sorted(VISION_MSGS_DIR.glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(encoding="utf-8"), f"vision_msgs/msg/{path.stem}"))
    if DETECTION2D_ARRAY not in types:
        raise BagError(f"{VISION_MSGS_DIR}: vision_msgs message definitions are missing (no Detection2DArray.msg)")
    store.register(types)
    return store


def message_class(msgtype: str) -> Any:
    """The rosbags dataclass of ``msgtype`` (e.g. ``sensor_msgs/msg/Image``)."""
    try:
        return typestore().types[msgtype]
    except KeyError:
        raise BagError(f"message type {msgtype!r} is not known to the bag typestore") from None


def serialize(msg: Any, msgtype: str | None = None) -> bytes:
    """CDR bytes of a rosbags message (type from the message unless given)."""
    name = msgtype or msg.__msgtype__
    return bytes(typestore().serialize_cdr(msg, name))


def deserialize(data: bytes | memoryview, msgtype: str) -> Any:
    """A rosbags message from CDR bytes; raises whatever rosbags raises on broken data."""
    return typestore().deserialize_cdr(data, msgtype)
