"""The `quantlab` console script (also `python -m quantlab_pipeline`): the command runs in a
process forked from the warm server when it can (docs/running.md "The warm server"), else right here.

Kept apart from `quantlab_pipeline.cli`, whose import alone (click, rich, every command) would
cost more than handing the command to the server."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from quantlab_pipeline.warm import client, protocol


def main() -> NoReturn:
    if protocol.enabled(os.environ):
        code = client.run_in_server(sys.argv)
        if code is not None:
            client.exit_like(code)
    from quantlab_pipeline.cli import main as run_here

    run_here()


if __name__ == "__main__":
    main()
