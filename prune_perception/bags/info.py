"""``bag_info``: topics, types, counts, rates, duration and storage of a bag, as text or Markdown.

With ``scan=True`` (default) every message's log time is read (no deserialization) for exact
per-topic first/last times and rates — which also proves the counts; ``scan=False`` uses the
metadata and storage index only (no rates).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prune_perception.bags.messages import NS_PER_S
from prune_perception.bags.raw_bag import RawBag


@dataclass(frozen=True)
class TopicStats:
    """One topic: what it holds and, when scanned, when and how often."""

    name: str
    msgtype: str
    count: int
    """Messages stored (and read)."""
    declared_count: int
    """Messages metadata.yaml declares."""
    first_ns: int | None = None
    last_ns: int | None = None
    qos_mismatch: bool = False

    @property
    def rate_hz(self) -> float | None:
        """Mean message rate over the topic's own span; None below 2 messages or without a scan."""
        if self.first_ns is None or self.last_ns is None or self.count < 2 or self.last_ns <= self.first_ns:
            return None
        return (self.count - 1) * NS_PER_S / (self.last_ns - self.first_ns)


@dataclass(frozen=True)
class BagInfo:
    """Summary of one bag (times are log times in ns since the epoch)."""

    path: Path
    storage: str
    version: int
    ros_distro: str | None
    size_bytes: int
    message_count: int
    start_ns: int
    end_ns: int
    topics: list[TopicStats]
    notes: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / NS_PER_S if self.message_count else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings, rates included)."""
        out = asdict(self)
        out["path"] = str(self.path)
        out["duration_s"] = self.duration_s
        for topic, stats in zip(out["topics"], self.topics):
            topic["rate_hz"] = stats.rate_hz
        return out

    def _rows(self) -> list[tuple[str, str, str, str]]:
        rows = []
        for t in self.topics:
            count = str(t.count) if t.count == t.declared_count else f"{t.count} (metadata: {t.declared_count})"
            rate = f"{t.rate_hz:.2f}" if t.rate_hz is not None else "-"
            rows.append((t.name, t.msgtype, count, rate))
        return rows

    def _header(self) -> list[tuple[str, str]]:
        return [("Bag", str(self.path)),
                ("Storage", f"{self.storage} (metadata version {self.version}, {self.ros_distro or 'unknown distro'})"),
                ("Size", _size(self.size_bytes)), ("Messages", str(self.message_count)),
                ("Duration", f"{self.duration_s:.3f} s"),
                ("Start", _time(self.start_ns) if self.message_count else "-"),
                ("End", _time(self.end_ns) if self.message_count else "-")]

    def to_text(self) -> str:
        """Plain text, like ``ros2 bag info``."""
        lines = [f"{key + ':':<10}{value}" for key, value in self._header()]
        rows = [("Topic", "Type", "Count", "Rate (Hz)")] + self._rows()
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines.append("Topics:")
        lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines += [f"Note: {note}" for note in self.notes]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """Markdown: a key/value list and a topic table."""
        lines = [f"- **{key}**: {value}" for key, value in self._header()]
        lines += ["", "| Topic | Type | Count | Rate (Hz) |", "|---|---|---:|---:|"]
        lines += [f"| `{name}` | `{msgtype}` | {count} | {rate} |" for name, msgtype, count, rate in self._rows()]
        if self.notes:
            lines += [""] + [f"> {note}" for note in self.notes]
        return "\n".join(lines)


def _time(stamp_ns: int) -> str:
    seconds, nanos = divmod(stamp_ns, NS_PER_S)
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return f"{moment}.{nanos:09d} UTC ({seconds}.{nanos:09d})"


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{size} B"


def bag_info(path: str | Path, scan: bool = True) -> BagInfo:
    """Summarise the bag at ``path``; BagError when it cannot be opened or read."""
    with RawBag(path) as bag:
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        if scan:
            for topic, _, log_time, _ in bag.messages(bag.topics):
                first.setdefault(topic, log_time)
                first[topic] = min(first[topic], log_time)
                last[topic] = max(last.get(topic, log_time), log_time)
        topics = [TopicStats(t.name, t.msgtype, t.stored_count, t.declared_count, first.get(t.name),
                             last.get(t.name), t.qos_mismatch) for t in bag.topics.values()]
        start, end = bag.start_ns, bag.end_ns
        if first:
            start, end = min(first.values()), max(last.values())
        size = sum(p.stat().st_size for p in bag.path.iterdir() if p.is_file())
        return BagInfo(bag.path, bag.storage, bag.version, bag.ros_distro, size, bag.message_count, start, end,
                       topics, list(bag.notes))
