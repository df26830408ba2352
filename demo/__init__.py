"""The fifoq demo: the backend, the example connectors and the admin console wired together.

`demo.scenarios` declares the demo actors and plays the event stream; `python -m demo` runs
everything in one process (see demo.cli).
"""
