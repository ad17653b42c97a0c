"""Measurements that go into the README and issue notes; each writes JSON + Markdown under ``outputs/bench/``."""
