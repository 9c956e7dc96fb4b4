"""Workload-management logic: pure functions and typed records, no DB, no network."""
