"""Datasets: synthetic driving scenes, COCO/YOLO loaders, augmentation, torch dataset."""
