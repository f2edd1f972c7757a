"""Shared test set-up.

The PyTorch references live beside the tests. A persistent JAX compilation cache, shared by
the test process, its pytest-xdist workers and the subprocesses they start (CLI runs, the
8-device mesh), lets identical programs (the same tiny iteration in a resumed run, say) compile
once per session. With ``-n`` (pytest-xdist, ``--dist loadgroup`` in pyproject.toml) each test
file runs on one worker, and the files that train the tiny demo networks share one, so that
program is compiled once rather than once per worker.
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))

_CACHE = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "cptrans_jax_test_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


# Test files that train the same tiny networks through the trainer: one worker runs them all.
_TINY_TRAINER_FILES = ("test_trainer.py", "test_faults.py")


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        name = os.path.basename(str(item.fspath))
        group = "tiny_trainer" if name in _TINY_TRAINER_FILES else name
        item.add_marker(pytest.mark.xdist_group(group))
