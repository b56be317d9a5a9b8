"""``python -m chunkstore``: the command line."""

from __future__ import annotations

from chunkstore.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    main()
