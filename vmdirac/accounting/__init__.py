"""Accounting reports (pure: buckets, series) and their plots (matplotlib, PNG)."""
