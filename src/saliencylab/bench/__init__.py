"""Benchmarks: score methods on data with ground truth and write tables, figures and reports."""
