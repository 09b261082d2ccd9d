"""Reading the user's input databases (DuckDB, Parquet), and writing the sample one.

The only layer that opens an input source: the rules that validate and de-duplicate the rows
are pure and live in `quantlab_pipeline.core.inputs`. A bad source is one `InputError` line
naming the file, table and column.
"""
