"""Pictures of a run: the `quantlab report` HTML page (`html`) and its charts (`charts`), built from
frames `storage.run_contents` reads. No Dagster, no file I/O, and nothing on a backtest's path:
matplotlib draws at `quantlab report` time only (docs/reports.md).
"""
