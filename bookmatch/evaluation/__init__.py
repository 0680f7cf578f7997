"""Evaluation: metrics (incl. PAN c@1 / F0.5u, Brier, ECE), per-kind breakdown, plots, report.md, predictions."""
