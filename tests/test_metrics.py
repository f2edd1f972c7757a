"""MetricWriter event files, the progress line, the image quantisation and grid, check_finite."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from cptrans_jax.metrics import (
    MetricWriter,
    ProgressLogger,
    check_finite,
    image_grid,
    save_png,
    to_uint8,
)


def read_events(logdir):
    """Every ``Event`` in the event files of ``logdir`` (TFRecord framing, no TensorFlow)."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            # uint64 length, uint32 masked CRC of the length, payload, uint32 masked CRC.
            (length,) = struct.unpack_from("<Q", data, offset)
            payload = data[offset + 12 : offset + 12 + length]
            offset += 12 + length + 4
            event = Event()
            event.ParseFromString(payload)
            events.append(event)
    return events


def test_metric_writer_roundtrip(tmp_path):
    logdir = tmp_path / "tb"
    image = np.zeros((4, 6, 3), np.uint8)
    image[:, :3] = 255
    with MetricWriter(logdir) as writer:
        writer.write_scalars(10, {"loss/g": 2.5, "loss/d": np.float32(0.25)})
        writer.write_scalars(20, {"loss/g": 1.5})
        writer.write_images(20, {"samples": image})
        writer.flush()

    scalars, images = {}, {}
    for event in read_events(logdir):
        for value in event.summary.value:
            if value.HasField("image"):
                images[(value.tag, event.step)] = value.image
            else:
                scalars[(value.tag, event.step)] = value.simple_value
    assert scalars == {("loss/g", 10): 2.5, ("loss/d", 10): 0.25, ("loss/g", 20): 1.5}
    encoded = images[("samples", 20)]
    assert (encoded.height, encoded.width) == (4, 6)
    decoded = np.asarray(Image.open(io.BytesIO(encoded.encoded_image_string)).convert("RGB"))
    np.testing.assert_array_equal(decoded, image)


def test_metric_writer_rejects_float_images(tmp_path):
    with MetricWriter(tmp_path) as writer, pytest.raises(ValueError, match="uint8"):
        writer.write_images(0, {"x": np.zeros((2, 2, 3), np.float32)})


def test_disabled_writer_writes_nothing(tmp_path):
    logdir = tmp_path / "tb"
    writer = MetricWriter(logdir, enabled=False)
    writer.write_scalars(1, {"loss/g": 1.0})
    writer.write_images(1, {"samples": np.zeros((2, 2, 3), np.uint8)})
    writer.flush()
    writer.close()
    assert not logdir.exists()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_logger_line(tmp_path):
    clock, lines = FakeClock(), []
    logger = ProgressLogger(4000, every=20, start_step=100, print_fn=lines.append, clock=clock)
    metrics = {"loss/g": 2.76543, "loss/d": 0.53821, "lr/g": 2e-6}

    clock.now += 5.0
    assert not logger.log(110, metrics)  # not a multiple of every
    clock.now += 5.0
    assert logger.log(120, metrics)  # 20 steps in 10 s since start (step 100)
    # 2.00 it/s; 3880 steps left → 1940 s = 0:32:20. Metrics sorted by name.
    assert lines == [
        "step 120/4000 | 2.00 it/s | ETA 0:32:20 | loss/d 0.5382 loss/g 2.7654 lr/g 2.000e-06"
    ]

    clock.now += 40.0  # the rate is measured since the previous line only
    logger.log(140, {"loss/g": 1.0})
    assert lines[-1] == "step 140/4000 | 0.50 it/s | ETA 2:08:40 | loss/g 1.0000"

    clock.now += 1.0
    logger.log(4000, {})  # the last step, without metrics
    assert lines[-1] == "step 4000/4000 | 3860.00 it/s | ETA 0:00:00"


def test_progress_logger_final_step_and_no_elapsed_time():
    clock, lines = FakeClock(), []
    logger = ProgressLogger(25, every=10, print_fn=lines.append, clock=clock)
    logger.log(10, {"loss/g": 1.0})  # no time has passed: no rate to divide by
    assert lines == ["step 10/25 | -- it/s | ETA -- | loss/g 1.0000"]
    clock.now += 3.0
    assert logger.log(25, {"loss/g": 0.5})  # the final step is printed though not a multiple
    assert lines[-1] == "step 25/25 | 5.00 it/s | ETA 0:00:00 | loss/g 0.5000"


def test_to_uint8_hand_values():
    x = np.array([-1.0, 1.0, 0.0, 0.999, -5.0, 5.0, np.nan, 0.5], np.float32)
    # 0 → 127.5 truncates to 127; 0.999 → 254.87 → 254; clamped outside [-1, 1]; NaN → 0;
    # 0.5 → 191.25 → 191.
    np.testing.assert_array_equal(to_uint8(x), [0, 255, 127, 254, 0, 255, 0, 191])
    assert to_uint8(x).dtype == np.uint8


def test_image_grid_layout():
    def image(value, h=2, w=3):
        return np.full((h, w, 3), value, np.float32)

    grid = image_grid([[image(-1.0), image(0.0), image(1.0)], [image(0.999), image(1), image(-1)]])
    assert grid.shape == (4, 9, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[:2, 0:3], 0)
    np.testing.assert_array_equal(grid[:2, 3:6], 127)
    np.testing.assert_array_equal(grid[:2, 6:9], 255)
    np.testing.assert_array_equal(grid[2:, 0:3], 254)
    np.testing.assert_array_equal(grid[2:, 3:6], 255)
    np.testing.assert_array_equal(grid[2:, 6:9], 0)

    # Images of different widths in a row are fine as long as rows add up to the same width.
    mixed = image_grid([[image(0.0, w=2), image(1.0, w=4)], [image(-1.0, w=6)]])
    assert mixed.shape == (4, 6, 3)
    with pytest.raises(ValueError, match="height"):
        image_grid([[image(0.0, h=2), image(0.0, h=3)]])
    with pytest.raises(ValueError, match="width"):
        image_grid([[image(0.0, w=2)], [image(0.0, w=3)]])


def test_save_png_roundtrip(tmp_path):
    image = to_uint8(np.linspace(-1, 1, 4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3))
    path = tmp_path / "samples" / "step_10.png"
    save_png(path, image)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
    with pytest.raises(ValueError, match="uint8"):
        save_png(tmp_path / "bad.png", image.astype(np.float32))


def test_check_finite():
    check_finite({"loss/g": 1.0, "loss/d": np.float32(0.5)}, step=3)
    with pytest.raises(FloatingPointError) as info:
        check_finite({"loss/g": float("nan"), "loss/d": 0.1, "loss/nce": float("inf")}, step=42)
    message = str(info.value)
    assert "step 42" in message
    assert "loss/g = nan" in message and "loss/nce = inf" in message
    assert "loss/d" not in message
