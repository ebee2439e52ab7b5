"""Class names of the built-in synthetic driving benchmark (index = class id, COCO id = index + 1)."""

SYNTH_CLASSES = ("car", "truck", "pedestrian", "cyclist", "traffic_light", "traffic_sign")
