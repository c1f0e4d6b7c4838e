"""Fixtures of the training tests."""
import pytest
from clitools import TINY


@pytest.fixture
def tiny():
    return list(TINY)
