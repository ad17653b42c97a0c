"""Scoring: the official VQAv2 accuracy and batched greedy generation."""
