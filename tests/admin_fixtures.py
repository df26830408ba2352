"""Kept for test_ordering_keys.py only, which still imports these fixtures by name: they live in
conftest.py now (no test module should import fixtures). Remove this file with that import."""
from tests.conftest import app, users, viewer

__all__ = ["app", "users", "viewer"]
