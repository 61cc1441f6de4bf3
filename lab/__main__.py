"""The local lab (issue 5) is not built yet; this says so instead of pretending."""

import sys

if __name__ == "__main__":
    sys.exit("the lab is being built (issue 5): nothing to run yet")
