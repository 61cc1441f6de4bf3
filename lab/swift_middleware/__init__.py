"""Paste filters the lab's real Swift proxy loads: this directory goes on the proxy's
PYTHONPATH (Debian's /usr/bin/python3), so each module here is the standard library only."""
