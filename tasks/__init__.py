"""Prefect tasks: I/O, retries, Dask clusters and tracking around svrl_core."""
