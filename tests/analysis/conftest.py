"""The session's run files of every kind (analysis_files.make_run_files)."""

from __future__ import annotations

import pytest
from analysis_files import RunFiles, make_run_files


@pytest.fixture(scope="session")
def run_files(tmp_path_factory: pytest.TempPathFactory) -> RunFiles:
    return make_run_files(tmp_path_factory.mktemp("runfiles"))
