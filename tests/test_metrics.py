"""MetricWriter event files, the progress line and its ETA, image grids, check_finite."""

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
    rate_and_eta,
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


def test_rate_and_eta_hand_values():
    assert rate_and_eta([], 100) is None
    assert rate_and_eta([(5, 1.0)], 100) is None  # one mark: no interval
    assert rate_and_eta([(5, 1.0), (5, 3.0)], 100) is None  # no step
    assert rate_and_eta([(5, 1.0), (9, 1.0)], 100) is None  # no time
    # From the first mark to the last: 19 steps in 9.5 s = 2 it/s; 3980 left = 1990 s.
    assert rate_and_eta([(1, 150.5), (20, 160.0)], 4000) == (2.0, 1990.0)
    # Marks between the ends do not matter: 40 steps in 15 s; 40 steps left = 15 s.
    rate, eta = rate_and_eta([(20, 10.0), (40, 20.0), (60, 25.0)], 100)
    assert rate == pytest.approx(40 / 15) and eta == pytest.approx(15.0)
    assert rate_and_eta([(0, 0.0), (10, 5.0)], 8) == (2.0, 0.0)  # past the end: nothing left


def test_progress_logger_first_step_and_recent_window():
    clock, lines = FakeClock(), []
    logger = ProgressLogger(4000, every=20, window=2, print_fn=lines.append, clock=clock)
    metrics = {"loss/g": 2.76543, "loss/d": 0.53821, "lr/g": 2e-6}

    clock.now += 50.5  # the compilation and the first step
    assert logger.due(1) and logger.log(1, metrics)  # the first step, though not a multiple
    # Its only interval holds the compilation: no rate. Metrics sorted by name.
    assert lines == ["step 1/4000 | -- it/s | ETA -- | loss/d 0.5382 loss/g 2.7654 lr/g 2.000e-06"]
    assert not logger.due(2) and not logger.log(2, metrics)

    clock.now = 160.0  # 19 steps in 9.5 s since step 1: the 50 s of compiling do not count
    logger.log(20, {"loss/g": 1.0})
    assert lines[-1] == "step 20/4000 | 2.00 it/s | ETA 0:33:10 | loss/g 1.0000"

    clock.now = 200.0  # a slow stretch: 20 steps in 40 s; window 1→40: 39 steps in 49.5 s
    logger.log(40, {})
    assert lines[-1] == "step 40/4000 | 0.79 it/s | ETA 1:23:46"  # 3960 / (39 / 49.5) s
    clock.now = 210.0
    logger.log(60, {})  # window 20→60: 40 steps in 50 s, the slow stretch included
    assert lines[-1] == "step 60/4000 | 0.80 it/s | ETA 1:22:05"
    clock.now = 220.0
    logger.log(80, {})  # window 40→80: 40 steps in 20 s: the slow stretch has dropped out
    assert lines[-1] == "step 80/4000 | 2.00 it/s | ETA 0:32:40"
    clock.now = 230.0
    logger.log(100, {})  # window 60→100
    assert lines[-1] == "step 100/4000 | 2.00 it/s | ETA 0:32:30"

    clock.now = 2180.0
    assert logger.log(4000, {})  # the last step is a line of its own
    assert lines[-1] == "step 4000/4000 | 2.00 it/s | ETA 0:00:00"


def test_progress_logger_resumed_run_and_no_elapsed_time():
    clock, lines = FakeClock(), []
    logger = ProgressLogger(25, every=10, start_step=12, print_fn=lines.append, clock=clock)
    assert [s for s in range(13, 26) if logger.due(s)] == [13, 20, 25]
    logger.log(13, {"loss/g": 1.0})
    logger.log(20, {"loss/g": 0.5})  # no time has passed: no rate to divide by
    assert lines == [
        "step 13/25 | -- it/s | ETA -- | loss/g 1.0000",
        "step 20/25 | -- it/s | ETA -- | loss/g 0.5000",
    ]
    clock.now += 3.5
    assert logger.log(25, {})  # 12 steps in 3.5 s since step 13 (the window holds both lines)
    assert lines[-1] == "step 25/25 | 3.43 it/s | ETA 0:00:00"
    with pytest.raises(ValueError, match="window"):
        ProgressLogger(25, every=10, window=0)


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
