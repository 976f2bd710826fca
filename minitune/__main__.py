import sys

from minitune.cli import main

sys.exit(main())
