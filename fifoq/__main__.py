import sys

from fifoq.cli import main

sys.exit(main())
