"""`eval --detections dets.json --annotations gt.json`: a COCO results file scored against COCO ground truth,
without image files; known mAP on hand-built files, one readable line for every malformed file."""

import json
import subprocess
import sys

import pytest

from prune_perception.errors import DatasetError
from prune_perception.evaluation.coco_map import evaluate_results_file

# Category ids need not be 1..C: the evaluator must map by id, not by position.
CATEGORIES = [{"id": 3, "name": "car"}, {"id": 7, "name": "pedestrian"}]
GT_BOXES = [(1, 3, [10, 10, 30, 40]), (1, 7, [50, 20, 40, 50]), (2, 3, [5, 5, 20, 25])]  # image, category, xywh
ONE_OF_TWO_CARS = 51 / 101  # COCO's 101-point interpolated AP when half the objects are found, all at precision 1


def ground_truth(crowd=()):
    """A COCO annotation file document: two images (no files), the GT_BOXES plus ``crowd`` regions."""
    annotations = [{"id": i + 1, "image_id": image, "category_id": category, "bbox": box, "area": box[2] * box[3],
                    "iscrowd": 0} for i, (image, category, box) in enumerate(GT_BOXES)]
    annotations += [{"id": 100 + i, "image_id": image, "category_id": category, "bbox": box, "area": box[2] * box[3],
                     "iscrowd": 1} for i, (image, category, box) in enumerate(crowd)]
    return {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
                       {"id": 2, "file_name": "b.jpg", "width": 100, "height": 80}],
            "annotations": annotations, "categories": CATEGORIES}


def detections(boxes=GT_BOXES, score=0.9):
    return [{"image_id": image, "category_id": category, "bbox": box, "score": score} for image, category, box in boxes]


@pytest.fixture
def files(tmp_path):
    """write(dets, gt=ground_truth()) -> (dets path, gt path)."""
    def write(dets, gt=None):
        dets_path, gt_path = tmp_path / "dets.json", tmp_path / "gt.json"
        dets_path.write_text(dets if isinstance(dets, str) else json.dumps(dets))
        gt_path.write_text(json.dumps(ground_truth() if gt is None else gt))
        return dets_path, gt_path
    return write


def test_perfect_detections_score_one(files):
    result = evaluate_results_file(*files(detections()))
    assert result.map50 == pytest.approx(1.0) and result.map50_95 == pytest.approx(1.0)
    assert result.num_images == 2 and result.num_detections == 3
    assert result.per_class["car"] == {"AP50": pytest.approx(1.0), "AP50_95": pytest.approx(1.0), "num_gt": 2}


def test_one_missed_object_gives_the_known_value(files):
    result = evaluate_results_file(*files(detections(GT_BOXES[:2])))
    assert result.per_class["car"]["AP50"] == pytest.approx(ONE_OF_TWO_CARS)
    assert result.per_class["pedestrian"]["AP50"] == pytest.approx(1.0)
    assert result.map50 == pytest.approx((ONE_OF_TWO_CARS + 1.0) / 2)


def test_a_detection_of_the_wrong_category_is_a_false_positive(files):
    swapped = [(1, 7, GT_BOXES[0][2]), *GT_BOXES[1:]]  # the first car reported as a pedestrian
    result = evaluate_results_file(*files(detections(swapped)))
    assert result.per_class["car"]["AP50"] == pytest.approx(ONE_OF_TWO_CARS)
    assert result.per_class["pedestrian"]["AP50"] < 1.0


def test_no_detections_score_zero(files):
    result = evaluate_results_file(*files([]))
    assert result.map50 == 0.0 and result.map50_95 == 0.0 and result.num_detections == 0


def test_detections_on_crowd_regions_are_ignored_as_pycocotools_does(files):
    crowd_box = (2, 3, [60, 40, 30, 30])
    dets = detections() + detections([crowd_box], score=0.95)  # the best-scored detection lies on a crowd region
    assert evaluate_results_file(*files(dets, ground_truth(crowd=[crowd_box]))).map50 == pytest.approx(1.0)
    assert evaluate_results_file(*files(dets)).per_class["car"]["AP50"] < 1.0  # without the region: a false positive


@pytest.mark.parametrize("dets, problem", [
    ('{"image_id": 1}', "expected a COCO results list"),
    ("[{", "not valid JSON"),
    ([{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}], "detection [0] has no 'score' field"),
    ([{"category_id": 3, "score": 0.5}], "detection [0] has no 'image_id', 'bbox' fields"),
    (detections() + [{"image_id": 9, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}],
     "detection [3] refers to image id 9, which"),
    ([{"image_id": 1, "category_id": 0, "bbox": [0, 0, 1, 1], "score": 0.5}],
     "detection [0] has category id 0, not one of"),
    ([{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1], "score": 0.5}], "detection [0] has bbox [0, 0, 1]"),
    ([{"image_id": 1, "category_id": 3, "bbox": [0, 0, -1, 1], "score": 0.5}], "width and height >= 0"),
    ([{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": "high"}], "has score 'high'"),
    (["x"], "detection [0] is not an object"),
])
def test_malformed_detections_name_the_entry_and_problem(files, dets, problem):
    dets_path, _ = paths = files(dets)
    with pytest.raises(DatasetError) as error:
        evaluate_results_file(*paths)
    assert problem in str(error.value) and str(dets_path) in str(error.value)


def test_unknown_category_error_lists_the_known_ones(files):
    with pytest.raises(DatasetError, match=r"categories: 3 \(car\), 7 \(pedestrian\)"):
        evaluate_results_file(*files([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]))


@pytest.mark.parametrize("change, problem", [
    (lambda gt: gt.pop("categories"), "no 'categories' list"),
    (lambda gt: gt["annotations"][0].pop("bbox"), "annotations[0] has no 'bbox' field"),
    (lambda gt: gt["annotations"][0].update(image_id=5), "annotation refers to unknown image id 5"),
])
def test_malformed_ground_truth_is_a_dataset_error(files, change, problem):
    gt = ground_truth()
    change(gt)
    with pytest.raises(DatasetError, match=problem.replace("(", r"\(").replace("[", r"\[")):
        evaluate_results_file(*files(detections(), gt))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "prune_perception.cli", "-q", "eval", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_cli_scores_a_results_file(files):
    dets_path, gt_path = files(detections(GT_BOXES[:2]))
    result = run_cli("--detections", dets_path, "--annotations", gt_path)
    assert result.returncode == 0, result.stderr
    assert f"mAP50 {(ONE_OF_TWO_CARS + 1.0) / 2:.3f} " in result.stdout and "on 2 images" in result.stdout


@pytest.mark.parametrize("args, problem", [
    (["--detections", "DETS"], "needs --annotations GT_JSON"),
    (["--detections", "DETS", "--annotations", "GT", "--data", "somewhere"], "give no model and no --data"),
    (["--detections", "DETS", "--annotations", "GT", "MODEL"], "give no model and no --data"),
    (["MODEL"], "give a model and --data DATASET, or --detections"),
    (["--detections", "DETS", "--annotations", "GT"], "detection [0] has category id 0"),
])
def test_cli_errors_are_one_line(files, args, problem):
    dets_path, gt_path = files([{"image_id": 1, "category_id": 0, "bbox": [0, 0, 1, 1], "score": 0.5}])
    result = run_cli(*[{"DETS": dets_path, "GT": gt_path, "MODEL": "model.onnx"}.get(a, a) for a in args])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and problem in lines[0], result.stderr
