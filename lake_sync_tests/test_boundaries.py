"""The core stays plain Python: importing it must not import Dagster."""

from __future__ import annotations

import subprocess
import sys

import pytest

CORE_MODULES = [
    "lake_sync.sync",
    "lake_sync.search",
    "lake_sync.source.paimon",
    "lake_sync.embed",
    "lake_sync.index.writer",
]


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_without_dagster(module: str) -> None:
    code = f"import sys, {module}; print('dagster' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "False"
