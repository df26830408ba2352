"""The `fifoq` command: every command line of the project under one name (see fifoq.cli)."""
