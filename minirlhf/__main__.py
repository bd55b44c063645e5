import sys

from minirlhf.cli import main

sys.exit(main())
