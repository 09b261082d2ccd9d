"""Storage: the run directory (layout, atomic writes, manifest, completion) and the DuckDB catalog.

No Dagster imports: the IO managers and the CLI call into this layer.
"""
