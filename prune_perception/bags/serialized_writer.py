"""Low-level rosbag2 writer for already-serialized (CDR) messages of any known type.

Used for dataset bags and by the ROS side to record node outputs serialized by rclpy:
``writer.write(topic, msgtype, cdr_bytes, log_time_ns)``. Topics are added on first use with a
recorder-like offered QoS (reliable, volatile). Thread-safe; closing always writes metadata.yaml,
so a bag recorded until an exception keeps what it holds.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from rosbags.interfaces import (Connection, Qos, QosDurability, QosHistory, QosLiveliness, QosReliability,
                                QosTime)
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.errors import WriterError

from prune_perception.bags.typestore import serialize, typestore
from prune_perception.errors import BagError

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
DEFAULT_VERSION = 8
"""metadata.yaml version written: 8 is read by rosbag2 Iron..Kilted and rosbags (9 changes the QoS format)."""

_INFINITE = QosTime(sec=9223372036, nsec=854775807)  # rmw's "infinite" duration, as rosbag2 records it


def recorded_qos(reliable: bool = True) -> Qos:
    """An offered QoS profile as rosbag2 records it for a publisher (history unknown, depth 0)."""
    return Qos(history=QosHistory.UNKNOWN, depth=0,
               reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               durability=QosDurability.VOLATILE, deadline=_INFINITE, lifespan=_INFINITE,
               liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=_INFINITE,
               avoid_ros_namespace_conventions=False)


def check_new_output(output: Path) -> None:
    """BagError if ``output`` exists (bags are never overwritten) or its parent is not a folder."""
    if output.exists():
        raise BagError(f"{output}: output bag already exists; remove it or choose another path (bags are never "
                       "overwritten)")
    if output.parent.exists() and not output.parent.is_dir():
        raise BagError(f"{output}: parent {output.parent} is not a folder")


class BagWriter:
    """A new rosbag2 bag at ``output`` (``storage`` 'mcap' or 'sqlite3'); use as a context manager."""

    def __init__(self, output: str | Path, storage: str = "mcap", version: int = DEFAULT_VERSION,
                 custom_data: dict[str, str] | None = None) -> None:
        self.path = Path(output)
        if storage not in STORAGES:
            raise BagError(f"{self.path}: unknown storage {storage!r} (choose one of {', '.join(STORAGES)})")
        if version not in (8, 9):
            raise BagError(f"{self.path}: metadata version {version} cannot be written (8 or 9)")
        check_new_output(self.path)
        self.storage = storage
        self._writer = Writer(self.path, version=version, storage_plugin=STORAGES[storage])
        for key, value in (custom_data or {}).items():
            self._writer.set_custom_data(str(key), str(value))
        self._connections: dict[str, Connection] = {}
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer.open()
        except (OSError, WriterError) as exc:
            raise BagError(f"{self.path}: cannot create bag ({exc})") from None

    def add_topic(self, topic: str, msgtype: str, qos: Sequence[Qos] | None = None, msgdef: str | None = None,
                  type_hash: str | None = None) -> None:
        """Declare ``topic``; types outside the typestore need ``msgdef`` (ros2msg text) and ``type_hash`` (RIHS01)."""
        with self._lock:
            self._add_topic(topic, msgtype, qos, msgdef, type_hash)

    def _add_topic(self, topic: str, msgtype: str, qos: Sequence[Qos] | None, msgdef: str | None,
                   type_hash: str | None) -> Connection:
        known = self._connections.get(topic)
        if known is not None:
            if known.msgtype != msgtype:
                raise BagError(f"{self.path}: topic {topic} already holds {known.msgtype}, cannot add {msgtype}")
            return known
        store = typestore()
        if (msgdef is None or type_hash is None) and msgtype not in store.fielddefs:
            raise BagError(f"{self.path}: topic {topic}: message type {msgtype!r} is unknown to the bag typestore; "
                           "pass msgdef and type_hash")
        try:
            connection = self._writer.add_connection(
                topic, msgtype, typestore=store, msgdef=msgdef, rihs01=type_hash,
                offered_qos_profiles=list(qos) if qos is not None else [recorded_qos()])
        except WriterError as exc:
            raise BagError(f"{self.path}: cannot add topic {topic} ({exc})") from None
        self._connections[topic] = connection
        self._counts[topic] = 0
        return connection

    def write(self, topic: str, msgtype: str, data: bytes | memoryview, log_time_ns: int) -> None:
        """Write one CDR-serialized message received (or published) at ``log_time_ns``."""
        with self._lock:
            if self._closed:
                raise BagError(f"{self.path}: bag is closed; cannot write to {topic}")
            connection = self._connections.get(topic) or self._add_topic(topic, msgtype, None, None, None)
            if connection.msgtype != msgtype:
                raise BagError(f"{self.path}: topic {topic} holds {connection.msgtype}, got a {msgtype}")
            try:
                self._writer.write(connection, int(log_time_ns), data)
            except (OSError, WriterError) as exc:
                raise BagError(f"{self.path}: cannot write to {topic} ({exc})") from None
            self._counts[topic] += 1

    def write_message(self, topic: str, msg: Any, log_time_ns: int) -> None:
        """Serialize a rosbags message and write it."""
        self.write(topic, msg.__msgtype__, serialize(msg), log_time_ns)

    @property
    def counts(self) -> dict[str, int]:
        """Messages written per topic so far."""
        with self._lock:
            return dict(self._counts)

    def close(self) -> None:
        """Finish the storage file and write metadata.yaml (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._writer.close()
            except (OSError, WriterError) as exc:
                raise BagError(f"{self.path}: cannot finish bag ({exc})") from None

    def discard(self) -> None:
        """Stop writing and delete the bag folder (for writers that must not leave half a bag behind)."""
        with self._lock:
            self._closed = True
            self._writer.abort()
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
