"""Serve a directory with nginx on 127.0.0.1 (the remote store for ``storage=remote`` and the remote benchmark).

    python benchmarks/nginx_serve.py ~/.cache/coldstart/checkpoints --port 8080    # Ctrl-C stops it

nginx must be installed (``.ci/install-nginx.sh`` does it as root). The server itself is ``harness.nginx.serve``.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
from pathlib import Path

from harness.nginx import NginxError, serve

__all__ = ["serve"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill`/timeouts stop nginx as Ctrl-C does
    try:
        with serve(args.root, args.port, args.host, workers=args.workers) as url:
            print(f"serving {args.root} at {url} (Ctrl-C stops)", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    except NginxError as exc:
        raise SystemExit(str(exc)) from exc


if __name__ == "__main__":
    main()
