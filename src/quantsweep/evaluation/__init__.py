"""Scoring a model with lm-eval: the harness call, the shipped offline task files and their YAMLs."""
