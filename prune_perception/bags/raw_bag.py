"""Open a rosbag2 bag (mcap or sqlite3, metadata.yaml versions up to 9) and read raw messages per topic.

The QoS trap (docs/design.md §9): rosbags' ``Reader.messages()`` pairs metadata.yaml's topics with the
storage's by topic, type *and* offered QoS; where the two QoS strings differ (older recorders,
rewritten or reindexed bags) it silently yields nothing for that topic. Here messages are always
read through the storage's own topic records, so the QoS in metadata.yaml cannot hide any; such
topics are reported in :attr:`RawBag.qos_mismatch_topics`. Per-topic counts are checked three ways:
declared (metadata.yaml) vs stored (storage index) on open — a difference is a warning — and
stored vs actually read after each full pass — a difference is a :class:`BagError`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from rosbags.interfaces import Connection
from rosbags.rosbag2 import Reader

from prune_perception.errors import BagError

log = logging.getLogger(__name__)

METADATA = "metadata.yaml"
STORAGE_SUFFIXES = (".mcap", ".db3")
SUPPORTED_STORAGES = ("mcap", "sqlite3")
MAX_VERSION = 9


@dataclass(frozen=True)
class TopicMeta:
    """One topic of a bag: type, message counts (metadata.yaml and storage) and QoS agreement."""

    name: str
    msgtype: str
    declared_count: int
    """Messages metadata.yaml declares."""
    stored_count: int
    """Messages the storage file(s) hold: what is read."""
    serialization_format: str
    type_hash: str
    """RIHS01 hash the bag records for the type ('' for older recorders)."""
    qos_mismatch: bool = False
    """metadata.yaml's offered QoS differ from the storage's (plain rosbags would read 0 messages)."""


def first_line(exc: BaseException) -> str:
    """An exception's text on one line (YAML and storage errors span several): error messages stay one line."""
    return " ".join(str(exc).split())


def _bag_dir(path: Path) -> Path:
    """The bag folder of ``path`` (the folder, its metadata.yaml or one of its storage files)."""
    if not path.exists():
        raise BagError(f"{path}: bag not found")
    if path.is_file() and (path.name == METADATA or path.suffix in STORAGE_SUFFIXES or path.suffix == ".zstd"):
        path = path.parent
    if not path.is_dir():
        raise BagError(f"{path}: not a rosbag2 bag (expected a folder with metadata.yaml and .mcap/.db3 files)")
    if not (path / METADATA).is_file():
        storage = sorted(p.name for p in path.iterdir() if p.suffix in STORAGE_SUFFIXES)
        hint = (f"it holds {', '.join(storage)}: if the recording was interrupted, recreate the metadata with "
                f"`ros2 bag reindex {path}`" if storage else "it holds no .mcap or .db3 file either")
        raise BagError(f"{path}: not a rosbag2 bag: {METADATA} is missing ({hint})")
    return path


def _read_metadata(bag: Path) -> dict[str, Any]:
    """metadata.yaml's ``rosbag2_bagfile_information``, checked for what rosbags cannot read."""
    try:
        document = yaml.safe_load((bag / METADATA).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BagError(f"{bag}: cannot read {METADATA} ({first_line(exc)})") from None
    info = document.get("rosbag2_bagfile_information") if isinstance(document, dict) else None
    if not isinstance(info, dict):
        raise BagError(f"{bag}: {METADATA} has no 'rosbag2_bagfile_information' mapping")
    version = info.get("version")
    if not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise BagError(f"{bag}: {METADATA} version {version!r} is not supported (1..{MAX_VERSION})")
    storage = info.get("storage_identifier")
    if storage not in SUPPORTED_STORAGES:
        raise BagError(f"{bag}: storage {storage!r} is not supported (supported: {', '.join(SUPPORTED_STORAGES)})")
    entries = _check_structure(bag, info)
    foreign = []
    for entry in entries:
        topic = entry.get("topic_metadata") or {}
        if topic.get("serialization_format", "cdr") != "cdr":
            foreign.append(f"{topic.get('name')} ({topic.get('serialization_format')})")
    if foreign:
        raise BagError(f"{bag}: unsupported serialization format on {', '.join(foreign)}: only 'cdr' (ROS 2) bags "
                       "can be read")
    return info


def _check_structure(bag: Path, info: dict[str, Any]) -> list[dict[str, Any]]:
    """BagError unless the fields rosbags reads have the types it expects (a hand-edited or corrupted
    metadata.yaml must not surface as a TypeError deep inside rosbags); returns the topic entries."""
    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def fail(what: str):
        return BagError(f"{bag}: {METADATA}: {what}")

    paths = info.get("relative_file_paths")
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise fail(f"relative_file_paths must be a list of file names, got {paths!r}")
    if not isinstance(info.get("files", []), list):
        raise fail("files must be a list")
    for key, field in (("duration", "nanoseconds"), ("starting_time", "nanoseconds_since_epoch")):
        value = info.get(key)
        if not isinstance(value, dict) or not is_int(value.get(field)):
            raise fail(f"{key}.{field} must be an integer, got {value!r}")
    if not is_int(info.get("message_count")):
        raise fail(f"message_count must be an integer, got {info.get('message_count')!r}")
    for key in ("compression_format", "compression_mode"):
        if not isinstance(info.get(key, ""), (str, type(None))):
            raise fail(f"{key} must be a string")
    entries = info.get("topics_with_message_count") or []
    if not isinstance(entries, list) or not all(
            isinstance(entry, dict) and isinstance(entry.get("topic_metadata"), dict) for entry in entries):
        raise fail("topics_with_message_count must be a list of {topic_metadata: {...}, message_count: N} entries")
    for entry in entries:
        topic = entry["topic_metadata"]
        if not all(isinstance(topic.get(key), str) and topic.get(key) for key in ("name", "type")):
            raise fail(f"every topic needs a name and a type (strings), got {topic!r}")
        if not isinstance(topic.get("serialization_format", "cdr"), str) or not isinstance(
                topic.get("type_description_hash", ""), str) or not isinstance(
                topic.get("offered_qos_profiles", ""), (str, list)):
            raise fail(f"topic {topic['name']}: serialization_format, type_description_hash and "
                       "offered_qos_profiles must be strings")
        if not is_int(entry.get("message_count")):
            raise fail(f"topic {topic['name']}: message_count must be an integer, got {entry.get('message_count')!r}")
    return entries


def _same_record(declared: Connection, stored: Connection) -> bool:
    """rosbags' own pairing rule of a metadata topic with a storage topic (QoS included)."""
    return (declared.topic == stored.topic and declared.msgtype == stored.msgtype and declared.ext == stored.ext
            and (not declared.digest or not stored.digest or declared.digest == stored.digest))


class RawBag:
    """An open bag: topic table, counts, raw CDR messages. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path) -> None:
        self.path = _bag_dir(Path(path))
        info = _read_metadata(self.path)
        self.version: int = info["version"]
        self.storage: str = info["storage_identifier"]
        ros_distro = info.get("ros_distro")
        self.ros_distro: str | None = None if ros_distro is None else str(ros_distro)
        custom_data = info.get("custom_data") or {}
        if not isinstance(custom_data, dict):
            raise BagError(f"{self.path}: {METADATA}: custom_data must be a mapping, got {type(custom_data).__name__}")
        self.custom_data: dict[str, str] = {str(key): str(value) for key, value in custom_data.items()}
        try:
            self._reader = Reader(self.path)
        except Exception as exc:  # rosbags' own metadata parsing: ReaderError, KeyError, TypeError...
            raise BagError(f"{self.path}: cannot read {METADATA} ({type(exc).__name__}: {first_line(exc)})") from None
        try:
            self._reader.open()
        except Exception as exc:  # rosbags raises ReaderError, apsw and OS errors, KeyError...
            raise BagError(f"{self.path}: cannot open the bag's storage ({type(exc).__name__}: {first_line(exc)}); the "
                           ".db3/.mcap file may be truncated or corrupt") from None
        try:
            self._stored: list[Connection] = [c for s in self._reader.storage.storages for c in s.connections]
            self.topics: dict[str, TopicMeta] = self._topic_table()
            self.notes: list[str] = self._check_counts()
            self.message_count = sum(t.stored_count for t in self.topics.values())
            self.start_ns = self._reader.start_time if self.message_count else 0
            self.end_ns = self._reader.end_time - 1 if self.message_count else 0
        except BagError:
            self.close()
            raise
        except Exception as exc:  # a corrupt topic table (metadata.yaml or storage): unusable, say so
            self.close()
            raise BagError(f"{self.path}: cannot read the bag's topic table ({type(exc).__name__}: {first_line(exc)}); "
                           f"{METADATA} or the storage file may be corrupt") from None
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ topic table

    def _topic_table(self) -> dict[str, TopicMeta]:
        declared: dict[str, list[Connection]] = {}
        for connection in self._reader.connections:
            declared.setdefault(connection.topic, []).append(connection)
        stored: dict[str, list[Connection]] = {}
        for connection in self._stored:
            stored.setdefault(connection.topic, []).append(connection)
        topics = {}
        for name in list(declared) + [n for n in stored if n not in declared]:
            meta, store = declared.get(name, []), stored.get(name, [])
            first = (store or meta)[0]
            mismatch = bool(meta and store) and not all(any(_same_record(m, s) for s in store) for m in meta)
            types = {c.msgtype for c in meta + store}
            if len(types) > 1:
                raise BagError(f"{self.path}: topic {name} has several message types {sorted(types)}")
            topics[name] = TopicMeta(name=name, msgtype=first.msgtype, declared_count=sum(c.msgcount for c in meta),
                                     stored_count=sum(c.msgcount for c in store),
                                     serialization_format=first.ext.serialization_format,
                                     type_hash=next((c.digest for c in store + meta if c.digest), ""),
                                     qos_mismatch=mismatch)
        return topics

    def _check_counts(self) -> list[str]:
        """Log (and return) what differs between metadata.yaml and the storage: nothing is dropped for it."""
        notes = []
        for topic in self.topics.values():
            if topic.qos_mismatch:
                notes.append(f"{self.path}: topic {topic.name}: the offered QoS in {METADATA} differ from the "
                             "storage's; reading it by the storage's own topic records (all "
                             f"{topic.stored_count} messages)")
                log.info("%s", notes[-1])
            if topic.declared_count != topic.stored_count:
                notes.append(f"{self.path}: topic {topic.name}: {METADATA} declares {topic.declared_count} "
                             f"messages, the storage holds {topic.stored_count}; reading what is stored")
                log.warning("%s", notes[-1])
        return notes

    @property
    def qos_mismatch_topics(self) -> list[str]:
        """Topics whose metadata QoS differ from the storage's (read all the same)."""
        return [t.name for t in self.topics.values() if t.qos_mismatch]

    def topics_of_type(self, *msgtypes: str) -> list[str]:
        """Names of the topics holding any of ``msgtypes``."""
        return [t.name for t in self.topics.values() if t.msgtype in msgtypes]

    def describe_topics(self) -> str:
        """``name (type)`` of every topic, for error messages."""
        return ", ".join(f"{t.name} ({t.msgtype})" for t in self.topics.values()) or "no topics"

    # ------------------------------------------------------------------ messages

    def messages(self, topics: Iterable[str]) -> Iterator[tuple[str, str, int, bytes]]:
        """``(topic, msgtype, log_time_ns, cdr_bytes)`` of ``topics`` in log-time order (per storage file).

        After a complete pass, each topic's count must equal the storage's: BagError otherwise.
        """
        wanted = set(topics)
        unknown = sorted(wanted - set(self.topics))
        if unknown:
            raise BagError(f"{self.path}: no topic {', '.join(unknown)} (topics: {self.describe_topics()})")
        connections = [c for c in self._stored if c.topic in wanted]
        if not connections:
            return
        counts: Counter[str] = Counter()
        try:
            for connection, log_time, data in self._reader.messages(connections):
                counts[connection.topic] += 1
                yield connection.topic, connection.msgtype, log_time, data
        except Exception as exc:  # storage errors: truncated chunks, malformed database pages, zstd...
            read = ", ".join(f"{t}: {counts[t]}" for t in sorted(wanted))
            raise BagError(f"{self.path}: reading messages failed after {read} messages ({type(exc).__name__}: "
                           f"{first_line(exc)}); the storage file may be truncated or corrupt") from None
        for topic in sorted(wanted):
            if counts[topic] != self.topics[topic].stored_count:
                raise BagError(f"{self.path}: topic {topic}: read {counts[topic]} messages but the storage holds "
                               f"{self.topics[topic].stored_count}")

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Close the storage files (idempotent; a reader left half-built by a corrupt bag closes quietly)."""
        if self._reader.is_open:
            try:
                self._reader.close()
            except Exception as exc:  # nothing left to do about it: the files are closed as far as they opened
                log.debug("%s: closing the reader failed: %s", self.path, exc)

    def __enter__(self) -> RawBag:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
