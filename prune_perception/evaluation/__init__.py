"""mAP evaluation (faster-coco-eval) and reports."""
