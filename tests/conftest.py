"""Fixtures and test-session settings. The helpers the test modules import live in tests/helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import make_text

# Tiny test models run fastest on one thread (and do not fight parallel subprocesses for cores).
torch.set_num_threads(1)


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    """A 20,000-character learnable UTF-8 text file."""
    path = tmp_path / "tiny.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path
