"""cli.run_command: the exit statuses and one-line messages every command shares."""

import json
import os
import signal

import pytest

from cptrans_jax.cli import run_command, run_report


def test_success_returns_zero(capsys):
    calls = []
    assert run_command(lambda: calls.append(1), not_written="x") == 0
    assert calls == [1] and capsys.readouterr().err == ""


@pytest.mark.parametrize("error", [ValueError("bad --size 0"), FileNotFoundError("no such file")])
def test_user_errors_are_one_line_and_status_2(capsys, error):
    def body():
        raise error

    assert run_command(body, not_written="nothing written to out.mp4") == 2
    assert capsys.readouterr().err == f"error: {error}\n"


def test_interrupt_says_what_was_not_written(capsys):
    def body():
        raise KeyboardInterrupt

    assert run_command(body, not_written="nothing written to out.mp4") == 130
    assert capsys.readouterr().err == "error: interrupted; nothing written to out.mp4\n"
    assert run_command(body, not_written="") == 130
    assert capsys.readouterr().err == "error: interrupted\n"


def test_sigterm_is_status_143_and_the_handler_is_restored(capsys):
    before = signal.getsignal(signal.SIGTERM)

    def body():
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to the main thread, raised here
        raise AssertionError("SIGTERM did not stop the body")

    assert run_command(body, not_written="out.json not written", catch_sigterm=True) == 143
    assert capsys.readouterr().err == "error: terminated; out.json not written\n"
    assert signal.getsignal(signal.SIGTERM) is before


def test_other_exceptions_are_not_swallowed():
    def body():
        raise RuntimeError("a bug: keep its traceback")

    with pytest.raises(RuntimeError, match="a bug"):
        run_command(body, not_written="")


def test_report_printed_and_json_written_whole(tmp_path, capsys):
    path = tmp_path / "sub" / "r.json"
    status = run_report(lambda: {"x": 1.5}, lambda r: f"x = {r['x']}", json_path=str(path))
    assert status == 0 and capsys.readouterr().out == "x = 1.5\n"
    assert json.loads(path.read_text()) == {"x": 1.5}
    assert sorted(os.listdir(path.parent)) == ["r.json"]  # no temporary file left


def test_failed_check_or_compute_leaves_no_json(tmp_path, capsys):
    path = tmp_path / "sub" / "r.json"
    ran = []

    def bad_check():
        raise ValueError("--iou must be in (0, 1]")

    status = run_report(lambda: ran.append(1), str, json_path=str(path), check=bad_check)
    assert status == 2 and ran == []  # the check runs before the work
    assert capsys.readouterr().err == "error: --iou must be in (0, 1]\n"

    def interrupted():
        raise KeyboardInterrupt

    assert run_report(interrupted, str, json_path=str(path)) == 130
    assert capsys.readouterr().err == f"error: interrupted; {path} not written\n"
    assert not path.exists() and not (tmp_path / "sub").exists()  # its folder removed too
