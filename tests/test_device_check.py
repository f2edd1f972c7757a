"""benchmarks/device_check: the GPU peak table, and what iteration.py passes to its children."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import device_check  # noqa: E402
import iteration  # noqa: E402


def test_peak_by_nvidia_smi_name():
    assert device_check.peak_for("NVIDIA H100 80GB HBM3") == (67.0, 989.0)  # SXM
    assert device_check.peak_for("NVIDIA H100 PCIe") == (51.0, 756.0)
    assert device_check.peak_for("NVIDIA H200") == (67.0, 989.0)
    assert device_check.peak_for("NVIDIA A100-SXM4-80GB") == (19.5, 312.0)
    assert device_check.peak_for("NVIDIA L40S") == (91.6, 362.0)  # not the L4's
    assert device_check.peak_for("NVIDIA L4") == (30.3, 121.0)
    assert device_check.peak_for("Tesla T4") is None


def test_iteration_children_get_the_precision_and_batch_asked_for():
    args = iteration.parse_args(
        ["--compute_dtype", "bfloat16", "--matmul_precision", "default", "--batch", "4"]
    )
    child = iteration.parse_args(iteration.child_command(args, "roma")[2:])
    assert (child.child, child.only, child.batch) == (True, "roma", 4)
    assert (child.compute_dtype, child.matmul_precision, child.conv_impl, child.tiny) == (
        "bfloat16",
        "default",
        "auto",
        False,
    )


def test_device_check_script_parses_and_refuses_unknown_flags():
    script = ROOT / "benchmarks" / "device_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    out = subprocess.run(["bash", str(script), "--gpu"], capture_output=True, text=True)
    assert out.returncode == 2 and "usage:" in out.stderr


def test_tiny_networks_fit_roma(monkeypatch):
    # ROMA draws distinct local centres among the ViT's patches: the tiny ViT has 36.
    monkeypatch.setenv("TINY", "1")
    vit = iteration._vit_cfg()
    assert vit.num_patches == 36
    assert iteration._objective("roma").roma_local_centers <= vit.num_patches
    monkeypatch.setenv("TINY", "0")
    assert iteration._vit_cfg().num_patches == 576
    assert iteration._objective("roma").roma_local_centers == 64
