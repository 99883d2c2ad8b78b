"""Code shared by the tests and bench/: tiny models, fake servers, the worker as a process, test data.

Importing it changes nothing (no environment variables, no files); tests/conftest.py holds the
fixtures and hooks, and points the test session at the tiny cache (``pytest_configure``).
"""
