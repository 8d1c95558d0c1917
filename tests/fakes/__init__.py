"""Fakes that stand in for the outside world at an engine's boundary (tests only)."""
