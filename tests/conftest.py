"""Shared test set-up: small helpers for moving arrays between PyTorch and JAX layouts."""

from __future__ import annotations

import os
import sys

# The PyTorch references live beside the tests.
sys.path.insert(0, os.path.dirname(__file__))
