"""Plain helpers the tests import (`from tests.support.x import y`); fixtures stay in tests/conftest.py."""
