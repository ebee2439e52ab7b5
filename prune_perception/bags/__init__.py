"""rosbag2 bags without ROS (rosbags + numpy + OpenCV): dataset <-> bag, evaluation-bag reading, bag info.

Never imports torch, rclpy or ROS message packages (docs/design.md §1).
"""

from prune_perception.bags.serialized_writer import BagWriter, recorded_qos
from prune_perception.bags.detections import LabelledBoxes, detections_from_bag_msg, detections_to_bag_msg
from prune_perception.bags.images import decode_image, decode_rgb
from prune_perception.bags.info import BagInfo, TopicStats, bag_info
from prune_perception.bags.raw_bag import RawBag, TopicMeta
from prune_perception.bags.reader import BagFrame, EvalBag, open_bag
from prune_perception.bags.to_dataset import DatasetExport, bag_to_dataset
from prune_perception.bags.topics import COMPRESSED_TOPIC, GT_TOPIC, IMAGE_TOPIC
from prune_perception.bags.typestore import typestore
from prune_perception.bags.dataset_bag import BagSummary, write_dataset_bag

__all__ = [
    "BagFrame", "BagInfo", "BagSummary", "BagWriter", "COMPRESSED_TOPIC", "DatasetExport", "EvalBag", "GT_TOPIC",
    "IMAGE_TOPIC", "LabelledBoxes", "RawBag", "TopicMeta", "TopicStats", "bag_info", "bag_to_dataset",
    "decode_image", "decode_rgb", "detections_from_bag_msg", "detections_to_bag_msg", "open_bag", "recorded_qos",
    "typestore", "write_dataset_bag",
]
