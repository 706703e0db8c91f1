import sys

from flow.run import main

sys.exit(main())
