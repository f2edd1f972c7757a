"""benchmarks/demo_table: the toy Table 1's aggregation (mean ± sample std over seeds)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import demo_table  # noqa: E402


def _run(row: str, seed: int, miou: float, l1: float, psnr: float, seconds: float) -> dict:
    iou = {"sky": miou, "verge": miou, "road": miou, "lane mark": 0.0, "object": None}
    base = {"sky": 0.8, "verge": 0.6, "road": 0.4, "lane mark": 0.0, "object": 0.0}
    return {
        "row": row,
        "seed": seed,
        "train_seconds": seconds,
        "translation": {"miou": miou, "iou": iou, "l1": l1, "psnr": psnr},
        "baseline": {"miou": 0.36, "iou": base, "l1": 0.05, "psnr": 20.0},
    }


def test_mean_and_sample_std():
    assert demo_table.mean_std([0.5]) == (0.5, 0.0)
    mean, std = demo_table.mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3)
    # sample variance: ((4/3)² + (1/3)² + (5/3)²) / 2 = 7/3
    assert std == pytest.approx((7 / 3) ** 0.5)


def test_table_rows_in_order_with_mean_std_and_the_baseline():
    results = [
        _run("roma", 0, 0.40, 0.10, 15.0, 300),
        _run("full", 1, 0.60, 0.06, 18.0, 330),
        _run("full", 0, 0.50, 0.08, 16.0, 310),
    ]
    lines = demo_table.table(results).splitlines()
    assert len(lines) == 5  # header, rule, CPTrans, ROMA, the baseline
    full, roma, baseline = lines[2], lines[3], lines[4]
    assert full.startswith("| CPTrans (CO + CTN) | 2 | 0.550 ± 0.071 | 0: 0.50, 1: 0.60 |")
    assert "| 0.0700 ± 0.0141 | 17.00 ± 1.41 | 320 ± 14 |" in full
    assert "0.55 / 0.55 / 0.55 / 0.00 / - |" in full  # object absent: "-"
    assert roma.startswith("| ROMA | 1 | 0.400 | 0: 0.40 |")  # one seed: no ± std
    assert baseline.startswith("| mean day frame (ignores its input) | - | 0.360 | - |")
    assert "0.80 / 0.60 / 0.40 / 0.00 / 0.00" in baseline
