"""Benchmarks that print figures (speed, quality, mesh, hash grid), their profiling, and the tiny model builders tests share."""
