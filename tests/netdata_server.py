"""The real netdata daemon the tests start: lab/netdata_real.py (shared with the lab)."""

from lab.netdata_real import NetdataServer, find_netdata, free_address

__all__ = ["NetdataServer", "find_netdata", "free_address"]
