"""Helpers that are not part of an experiment: generated data for tests and device checks."""
