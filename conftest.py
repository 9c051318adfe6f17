"""Doctests (``pytest --doctest-modules fastnn``) run in a fresh temporary directory,
so examples that write files (checkpoints, event files) leave nothing behind; they
read MNIST from the checkout's ``data/mnist`` (``$FASTNN_DATA``), never the network."""
import os

import pytest
from _pytest.doctest import DoctestItem

MNIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "mnist")


@pytest.fixture(autouse=True)
def _doctest_in_tmp_path(request, tmp_path, monkeypatch):
    if isinstance(request.node, DoctestItem):
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("FASTNN_DATA", MNIST)
