import sys

from fspkd.cli import main

sys.exit(main())
