"""Shared test set-up.

The PyTorch references live beside the tests. A persistent JAX compilation cache, shared by
the test process, its pytest-xdist workers and the subprocesses they start (CLI runs, the
8-device mesh), lets identical programs (the same tiny iteration in a resumed run, say) compile
once per session. With ``-n`` (pytest-xdist, ``--dist loadfile`` in pyproject.toml) each test
file runs on one worker, so its module fixtures and programs are made once.
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
