"""python -m cptrans_jax.detect_score: tiny ONNX detectors with known boxes, hand-made labels,
AP checked against a hand computation of COCO's 101-point AP.

Two 64×64 frames, ``a.png`` black and ``b.png`` white; the model (``onnx_yolo_models``) gives
both the same candidates, the white frame's scores 0.05 lower. After NMS (the 1-px-shifted
duplicate of A goes) each frame has car A .90/.85, car B .80/.75, car C .70/.65 and bus D
.60/.55 (frame a / frame b); the truck is under the score threshold.

Ground truth: frame a — cars at A and E (E is never detected); frame b — cars at B and C, a
bus at D.

car, ranked over both frames: aA .90 TP, bA .85 FP, aB .80 FP, bB .75 TP, aC .70 FP, bC .65
TP, of 4 objects: recall .25 .25 .25 .5 .5 .75, precision 1 .5 .33 .5 .4 .5; the envelope is
1 up to recall .25 and .5 up to .75. COCO's 101 recall points: 0…0.25 (26 points) at 1, 0.26…0.75
(50) at .5, 0.76…1 (25) at 0 → AP = (26 + 25) / 101 = 51/101.
bus: aD .60 FP, bD .55 TP, of 1: the envelope is .5 at every recall ≤ 1 → AP = 0.5.
truck: no ground truth → no AP, left out of the mean = (51/101 + 0.5) / 2.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx_yolo_models import (
    NAMES,
    end2end_table,
    save_model,
    yolov5_table,
    yolov8_table,
)
from PIL import Image

from cptrans_jax.detect_score import main, score_sets
from cptrans_jax.detection.labels import read_labels
from cptrans_jax.detection.yolo import DetectError, YoloDetector, letterbox

CAR_AP = 51 / 101
BUS_AP = 0.5
MEAN_AP = (CAR_AP + BUS_AP) / 2


def write_labels(folder, files: dict[str, str]) -> None:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


LABELS = {
    "a.txt": "0 0.25 0.25 0.25 0.25\n0 0.75 0.75 0.25 0.25\n",
    "b.txt": "0 0.75 0.25 0.25 0.25\n\n0 0.25 0.75 0.25 0.25\n1 0.71875 0.71875 0.4375 0.4375\n",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect")
    frames = root / "frames"
    frames.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(frames / "a.png")
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(frames / "b.png")
    write_labels(root / "labels", LABELS)
    models = {}
    for layout, (table, mask), batch in (
        ("yolov8", yolov8_table(), 1),
        ("yolov5", yolov5_table(), None),  # a dynamic batch axis
        ("end2end", end2end_table(), 1),
    ):
        models[layout] = root / f"{layout}.onnx"
        save_model(models[layout], table, mask, names=NAMES, batch=batch)
    return root, frames, root / "labels", models


def quiet(*_):
    pass


@pytest.mark.parametrize("layout", ["yolov8", "yolov5", "end2end"])
def test_ap_equals_the_hand_computation(data, layout):
    _, frames, labels, models = data
    detector = YoloDetector(models[layout], batch_size=2)
    assert detector.layout == layout and detector.batch == (2 if layout == "yolov5" else 1)
    result = score_sets(
        [("translation", str(frames))],
        str(labels),
        detector,
        classes=["car", "bus", "truck"],
        print_fn=quiet,
    )
    (row,) = result["sets"]
    assert row["ap"]["car"] == pytest.approx(CAR_AP, abs=1e-9)
    assert row["ap"]["bus"] == pytest.approx(BUS_AP, abs=1e-9)
    assert row["ap"]["truck"] is None
    assert row["mean"] == pytest.approx(MEAN_AP, abs=1e-9)
    assert (row["frames"], row["objects"]) == (2, 5)


def test_cli_table_json_compare_and_index_matching(data, tmp_path, capsys):
    """The paper's row layout: the translation and --compare sets; a set written as
    000000.png … scored by --match index; the JSON holds the same numbers."""
    _, frames, labels, models = data
    renamed = tmp_path / "translation"
    renamed.mkdir()
    for k, name in enumerate(("a.png", "b.png")):
        (renamed / f"{k:06d}.png").write_bytes((frames / name).read_bytes())
    # Another set, the brightness the other way round: frame 0 (a's labels) white, frame 1
    # black, so frame 1's scores are the higher ones.
    other = tmp_path / "other"
    other.mkdir()
    for k, value in enumerate((255, 0)):
        Image.fromarray(np.full((64, 64), value, np.uint8)).save(other / f"{k:06d}.png")
    out = tmp_path / "results" / "table.json"
    argv = [
        "--frames",
        f"cptrans={renamed}",
        "--labels",
        str(labels),
        "--detector",
        str(models["yolov8"]),
        "--compare",
        f"reversed={other}",
        "--match",
        "index",
        "--classes",
        "car,bus",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    print(printed)  # the note cites this output
    lines = printed.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("set")))
    assert lines[header].split() == ["set", "frames", "car", "bus", "mean"]
    assert lines[header + 1].split() == ["cptrans", "2", "0.5050", "0.5000", "0.5025"]
    # reversed: car bA .90 FP, aA .85 TP, bB .80 TP, aB .75 FP, bC .70 TP, aC .65 FP: recall
    # 0 .25 .5 .5 .75 .75, precision 0 .5 .67 .5 .6 .5, envelope 2/3 up to recall .5 (51
    # points), .6 up to .75 (25) → car AP (51·2/3 + 25·0.6)/101 = 49/101; bus bD .60 TP, aD .55
    # FP → 1; mean (49/101 + 1)/2.
    car, mean = 49 / 101, (49 / 101 + 1) / 2
    assert lines[header + 2].split() == ["reversed", "2", f"{car:.4f}", "1.0000", f"{mean:.4f}"]
    assert lines[-1].startswith("time per frame: ") and "ms over 4 frames" in lines[-1]
    saved = json.loads(out.read_text())
    assert [s["name"] for s in saved["sets"]] == ["cptrans", "reversed"]
    assert saved["sets"][0]["ap"]["car"] == pytest.approx(CAR_AP, abs=1e-9)
    assert saved["sets"][1]["ap"]["car"] == pytest.approx(car, abs=1e-9)
    assert saved["sets"][1]["mean"] == pytest.approx(mean, abs=1e-9)
    assert saved["classes"] == ["car", "bus"] and saved["layout"] == "yolov8"
    assert saved["timing"]["frames"] == 4


def test_letterbox_and_boxes_mapped_back_to_the_frame(tmp_path):
    """A 128×64 frame into a 64×64 input: scale 0.5, 16 rows of gray 114 above and below; a
    model box (16, 24)-(48, 40) is (32, 16)-(96, 48) in the frame."""
    frame = np.zeros((64, 128, 3), np.uint8)
    frame[:, 64:] = 200
    image, lb = letterbox(frame, 64, 64)
    assert (lb.gain, lb.left, lb.top) == (0.5, 0, 16)
    assert (image[:16] == 114).all() and (image[48:] == 114).all()
    assert (image[16:48, :31] == 0).all() and (image[16:48, 33:] == 200).all()
    table, mask = yolov8_table([(0, 0.9, 32, 32, 32, 16)])
    save_model(tmp_path / "m.onnx", table, mask, names=NAMES)
    detector = YoloDetector(tmp_path / "m.onnx")
    x, boxes = detector.prepare([frame])
    (det,) = detector.infer(x, boxes, [0, 1, 2])
    np.testing.assert_allclose(det.boxes, [[32, 16, 96, 48]], atol=1e-4)
    assert det.classes.tolist() == [0]


def test_yolov5_scores_are_objectness_times_class_probability(tmp_path):
    """One box, objectness 0.8, class probabilities (0.25, 0.5, 0): a candidate per class that
    clears the threshold — car 0.2, bus 0.4 — and class-aware NMS keeps both."""
    table = np.zeros((10, 8), np.float32)
    table[0] = (32, 32, 16, 16, 0.8, 0.25, 0.5, 0.0)
    save_model(tmp_path / "v5.onnx", table, np.zeros_like(table), names=NAMES)
    detector = YoloDetector(tmp_path / "v5.onnx")
    assert detector.layout == "yolov5"
    x, boxes = detector.prepare([np.zeros((64, 64, 3), np.uint8)])
    (det,) = detector.infer(x, boxes, [0, 1, 2])
    assert det.classes.tolist() == [1, 0]
    np.testing.assert_allclose(det.scores, [0.4, 0.2], rtol=1e-6)
    np.testing.assert_allclose(det.boxes, [[24, 24, 40, 40]] * 2, atol=1e-4)
    # Only the classes asked for are decoded.
    (det,) = detector.infer(x, boxes, [0])
    assert det.classes.tolist() == [0]


def test_wrong_class_names_are_one_error(data, capsys):
    _, frames, labels, models = data
    argv = ["--frames", str(frames), "--labels", str(labels), "--detector", str(models["yolov8"])]
    assert main([*argv, "--classes", "car,plane"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: --classes: unknown class 'plane': not a class of the detector (its classes "
        "are: car, bus, truck)\n"
    )
    # Labels whose own names do not include the class asked for.
    assert main([*argv, "--classes", "truck", "--label_names", "car,bus"]) == 2
    assert capsys.readouterr().err == (
        "error: --classes: unknown class 'truck': not a class of the labels (its classes are: "
        "car, bus)\n"
    )


def test_unknown_output_layout_is_one_error(data, tmp_path, capsys):
    _, frames, labels, _ = data
    # 9 rows fit neither 4 + 3 (YOLOv8) nor, as columns, 5 + 3 (YOLOv5) or 6 (end2end).
    save_model(tmp_path / "odd.onnx", np.zeros((9, 10)), np.zeros((9, 10)), names=NAMES)
    argv = [
        "--frames",
        str(frames),
        "--labels",
        str(labels),
        "--detector",
        str(tmp_path / "odd.onnx"),
    ]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "error: the detector's output (1, 9, 10) fits no known layout for 3 classes; expected "
        "YOLOv5 (batch, boxes, 5 + 3 = 8), YOLOv8 (batch, 4 + 3 = 7, boxes) or end2end (batch, "
        "boxes, 6) (check the number of class names, or give --layout)\n"
    )
    # A layout given that the shape does not have; a model without class names.
    assert main([*argv[:-1], str(data[3]["yolov8"]), "--layout", "yolov5"]) == 2
    assert "does not fit --layout yolov5 with 3 classes" in capsys.readouterr().err
    save_model(tmp_path / "anon.onnx", *yolov8_table(), names=None)
    assert main([*argv[:-1], str(tmp_path / "anon.onnx")]) == 2
    assert "has no class names in its metadata; give them with --detector_names" in (
        capsys.readouterr().err
    )
    assert (
        main(
            [
                *argv[:-1],
                str(tmp_path / "anon.onnx"),
                "--detector_names",
                "car,bus,truck",
                "--classes",
                "car,bus",
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("0 0.5 0.5 0.2", " has 4 fields"),
        ("car 0.5 0.5 0.2 0.2", " is not numeric"),
        ("7 0.5 0.5 0.2 0.2", ": class 7 is not one of the classes"),
        ("0 0.5 1.5 0.2 0.2", ": a coordinate is out of range"),
    ],
)
def test_a_bad_label_line_is_one_error(data, tmp_path, capsys, line, problem):
    _, frames, _, models = data
    labels = tmp_path / "labels"
    write_labels(labels, {"a.txt": LABELS["a.txt"], "b.txt": f"0 0.25 0.25 0.25 0.25\n{line}\n"})
    argv = ["--frames", str(frames), "--labels", str(labels), "--detector", str(models["yolov8"])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {labels / 'b.txt'}:2: {line!r}{problem}; expected 'class x_center y_center "
        "width height': an integer class in 0..2 and four numbers in [0, 1] normalised by the "
        "image size, width and height > 0\n"
    )


def test_bad_paths_and_unmatched_names_are_one_error(data, tmp_path, capsys):
    _, frames, labels, models = data
    base = ["--labels", str(labels), "--detector", str(models["yolov8"])]
    assert main(["--frames", str(tmp_path / "missing"), *base]) == 2
    assert capsys.readouterr().err == f"error: --frames {tmp_path / 'missing'} does not exist\n"
    other = tmp_path / "renamed"
    other.mkdir()
    (other / "000000.png").write_bytes((frames / "a.png").read_bytes())
    assert main(["--frames", str(other), *base]) == 2
    assert "give --match index" in capsys.readouterr().err
    assert main(["--frames", str(frames), *base, "--match", "index", "--compare", str(other)]) == 2
    assert "has 1 frames but --labels" in capsys.readouterr().err
    assert (
        main(
            [
                "--frames",
                str(frames),
                "--labels",
                str(labels),
                "--detector",
                str(tmp_path / "none.onnx"),
            ]
        )
        == 2
    )
    assert capsys.readouterr().err == f"error: --detector {tmp_path / 'none.onnx'} does not exist\n"


def test_read_labels_values(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("2 0.5 0.25 1 0.125\n\n  \n0 0 0 1e-3 1\n")
    np.testing.assert_array_equal(
        read_labels(str(path), 3), [[2, 0.5, 0.25, 1, 0.125], [0, 0, 0, 1e-3, 1]]
    )
    with pytest.raises(DetectError, match=r"x.txt:1: .*: class 2 is not one of the classes"):
        read_labels(str(path), 2)
