import sys

from scaling.report.command import main

sys.exit(main())
