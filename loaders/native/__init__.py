"""coldstart's own loader: native format, converter, pipelined reader, DRAM tier (see loader.py)."""
