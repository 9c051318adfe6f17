"""Doctests (``pytest --doctest-modules fastnn``) run in a fresh temporary directory,
so examples that write files (checkpoints, event files) leave nothing behind."""
import pytest
from _pytest.doctest import DoctestItem


@pytest.fixture(autouse=True)
def _doctest_in_tmp_path(request, tmp_path, monkeypatch):
    if isinstance(request.node, DoctestItem):
        monkeypatch.chdir(tmp_path)
