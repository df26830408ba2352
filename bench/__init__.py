"""Benchmarks: fifoq beside raw pika, measured in the same run on the same queue type.

    make bench                                   # everything, full size (several minutes)
    .venv/bin/python -m bench --quick            # a small smoke run
    .venv/bin/python -m bench emit connector --messages 10000 --queue-type classic

See docs/benchmarks.md for the results and how they were measured.
"""
