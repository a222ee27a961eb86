"""User agents to browser, OS, device type and bot flag, with ua-parser (the maintained
uap-core rules; the Rust accelerator when installed). Cached: a site sees few distinct UAs."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from ua_parser import parse

_BOT = re.compile(r"bot|crawl|spider|slurp|headless|lighthouse|monitor|curl|wget|python-requests", re.IGNORECASE)
_TABLET = re.compile(r"iPad|Tablet|PlayBook|Silk|(Android(?!.*Mobile))", re.IGNORECASE)
_MOBILE = re.compile(r"Mobi|iPhone|iPod|Android|IEMobile|Opera Mini|BlackBerry", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class UserAgent:
    browser: str
    browser_version: str
    os: str
    os_version: str
    device_type: str  # desktop | mobile | tablet | bot
    bot: bool


@functools.lru_cache(maxsize=8192)
def parse_user_agent(user_agent: str) -> UserAgent:
    result = parse(user_agent[:1000])
    ua, os_, device = result.user_agent, result.os, result.device
    bot = bool(_BOT.search(user_agent)) or (device is not None and device.family == "Spider")
    if bot:
        device_type = "bot"
    elif _TABLET.search(user_agent):
        device_type = "tablet"
    elif _MOBILE.search(user_agent):
        device_type = "mobile"
    else:
        device_type = "desktop"
    return UserAgent(
        browser=ua.family if ua else "",
        browser_version=".".join(p for p in (ua.major, ua.minor) if p) if ua else "",
        os=os_.family if os_ else "",
        os_version=".".join(p for p in (os_.major, os_.minor) if p) if os_ else "",
        device_type=device_type,
        bot=bot,
    )
