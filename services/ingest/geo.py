"""Country (and, with a MaxMind database, region and city) from an IP address, offline.

The bundled database is geoip2fast's (country level, IPv4 and IPv6, shipped inside
the package). Set TOUCHPOINT_GEOIP_MMDB to a GeoLite2/GeoIP2 City ``.mmdb`` for
region and city. Lookups use the address as it will be stored, so with IP
anonymisation on only the network prefix is ever looked up.
"""

from __future__ import annotations

import functools
from typing import Any

from geoip2fast import GeoIP2Fast


class Geo:
    def __init__(self, mmdb_path: str | None = None) -> None:
        self._fast = GeoIP2Fast(geoip2fast_data_file="geoip2fast-ipv6.dat.gz")
        self._mmdb: Any = None
        if mmdb_path:
            import maxminddb

            self._mmdb = maxminddb.open_database(mmdb_path)
        self.lookup = functools.lru_cache(maxsize=65536)(self._lookup)

    def _lookup(self, ip: str) -> dict[str, str] | None:
        if not ip:
            return None
        if self._mmdb is not None:
            found = self._mmdb.get(ip) or {}
            subdivisions = found.get("subdivisions") or [{}]
            return {
                "country": (found.get("country") or {}).get("iso_code", ""),
                "region": (subdivisions[0].get("names") or {}).get("en", ""),
                "city": ((found.get("city") or {}).get("names") or {}).get("en", ""),
            }
        result = self._fast.lookup(ip)
        code = result.country_code
        if not code or code == "--" or result.is_private:
            return None
        return {"country": code, "region": "", "city": ""}
