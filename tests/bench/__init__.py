"""Benchmarks: each figure is measured next to the machine limit it is compared with, in the same run."""
