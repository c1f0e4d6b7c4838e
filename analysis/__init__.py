"""Meaning layer: run directories and study storage -> tidy tables -> fits, plots, reports.

It reads files and storage only; it never imports the training code.
"""
