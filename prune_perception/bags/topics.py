"""Topic names and bag conventions of evaluation bags (docs/design.md §8)."""

IMAGE_TOPIC = "/camera/image_raw"
COMPRESSED_TOPIC = "/camera/image_raw/compressed"
GT_TOPIC = "/ground_truth/detections"
FRAME_ID = "camera"
CLASSES_KEY = "prune_perception.classes"
"""metadata.yaml custom_data key holding the JSON list of class names of a dataset bag."""
