"""Request bodies of the query API; invalid input answers 422 naming the field."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Step = str | dict[str, str]
Scope = Literal["journey", "session"]
# The dimensions of breakdowns and segment filters (``analytics.DIMENSIONS`` says how each is read).
Breakdown = Literal[
    "channel",
    "browser",
    "os",
    "device_type",
    "country",
    "network",
    "campaign_source",
    "campaign_medium",
    "campaign_name",
    "referrer_domain",
    "entry_touchpoint",
]
SegmentValues = Annotated[list[Annotated[str, Field(max_length=2000)]], Field(min_length=1, max_length=1000)]
Metric = Literal["response_ms", "ttfb_ms", "load_ms", "lcp_ms", "inp_ms", "errors"]


class TimeRange(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    from_: datetime | None = Field(None, alias="from", description="ISO 8601; default 7 days ago")
    to: datetime | None = Field(None, description="ISO 8601; default now")
    window_seconds: int = Field(86_400, gt=0, le=90 * 86_400)
    breakdown: Breakdown | None = Field(
        None,
        description="split the answer by the value of each journey's (or session's) first touchpoint: "
        "its channel, browser, …, campaign or referrer (first touch), or entry touchpoint",
    )
    filters: dict[Breakdown, SegmentValues] | None = Field(
        None,
        description="a segment: only the journeys (or sessions) whose first touchpoint has, for each "
        'dimension given, one of the values listed, e.g. {"campaign_source": ["google"], "country": ["DE", "AT"]}; '
        "the same units a breakdown by that dimension puts under those values ('' is none)",
    )
    include_bots: bool = Field(
        False,
        description="count the events of crawlers, monitors and headless browsers (known by their user agent); "
        "left out by default, as they abandon every page they visit",
    )


class ZonedRange(TimeRange):
    """A range whose answer is cut in calendar hours, days, weeks or months of a time zone."""

    timezone: str = Field("UTC", description="IANA time zone")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return known_zone(value)


class AbandonmentRequest(TimeRange):
    goal: Step | None = Field(None, description="default: the project's first goal")
    start: Step | None = None
    scope: Scope = "journey"
    limit: int = Field(20, ge=1, le=1000)

    model_config = ConfigDict(
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={
            "example": {
                "goal": {"name": "Order Completed"},
                "start": {"type": "page", "path": "/"},
                "window_seconds": 86400,
                "scope": "journey",
                "filters": {"campaign_source": ["google", "bing"]},
                "breakdown": "entry_touchpoint",
                "limit": 10,
            }
        },
    )


class CorrelationRequest(TimeRange):
    metric: Metric = "response_ms"
    touchpoint: Step | None = None
    goal: Step | None = None
    buckets: list[float] = Field(default_factory=lambda: [500.0, 1000.0, 2000.0, 4000.0], max_length=50)

    model_config = ConfigDict(
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={
            "example": {
                "metric": "response_ms",
                "touchpoint": {"type": "page", "path": "/search"},
                "goal": "Order Completed",
                "buckets": [500, 1000, 2000, 4000],
            }
        },
    )

    @field_validator("buckets")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if any(v <= 0 for v in value) or value != sorted(set(value)):
            raise ValueError("bucket edges must be positive and strictly increasing")
        return value


class FunnelRequest(TimeRange):
    steps: list[Step] = Field(min_length=2, max_length=20)
    scope: Scope = "journey"

    model_config = ConfigDict(
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={
            "example": {
                "steps": [
                    {"type": "page", "path": "/"},
                    "Products Searched",
                    {"type": "page", "path": "/cart"},
                    "Order Completed",
                ],
                "window_seconds": 86400,
                "scope": "journey",
                "breakdown": "channel",
            }
        },
    )


class PathsRequest(TimeRange):
    touchpoint: Step
    goal: Step | None = Field(None, description="when given, only journeys that never reached it")
    scope: Scope = "journey"
    limit: int = Field(10, ge=1, le=1000)

    model_config = ConfigDict(
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={"example": {"touchpoint": {"type": "page", "path": "/cart"}, "goal": "Order Completed"}},
    )


class ErrorsRequest(TimeRange):
    goal: Step | None = Field(None, description="default: the project's first goal")
    scope: Scope = "journey"
    limit: int = Field(20, ge=1, le=1000, description="error groups listed, the most widespread first")

    model_config = ConfigDict(
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={"example": {"goal": "Order Completed", "scope": "journey", "limit": 10}},
    )


PerformanceMetric = Literal["response_ms", "ttfb_ms", "load_ms", "lcp_ms", "inp_ms", "cls"]
PerformanceBy = Literal["touchpoint", "channel", "browser", "os", "device_type", "country", "network", "app_version"]


class PerformanceRequest(TimeRange):
    metric: PerformanceMetric = "response_ms"
    by: PerformanceBy = Field(
        "touchpoint",
        description="group the timed events by their own touchpoint, channel, browser, OS, device type, "
        "country, network or app version (each event's, not its journey's first touch)",
    )
    touchpoint: Step | None = Field(None, description="only this touchpoint's events (default: every timed event)")
    goal: Step | None = Field(None, description="default: the project's first goal")
    thresholds: tuple[float, float] | None = Field(
        None,
        description="[good, poor]: a value up to `good` is good, above `poor` poor, between the two needs "
        "improvement. Default: Core Web Vitals' for lcp_ms (2500, 4000), inp_ms (200, 500), cls (0.1, 0.25) "
        "and ttfb_ms (800, 1800); Apdex's T = 1 s and 4T for response_ms and load_ms",
    )
    limit: int = Field(20, ge=1, le=1000, description="groups listed, the slowest (75th percentile) first")

    model_config = ConfigDict(
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={
            "example": {
                "metric": "lcp_ms",
                "by": "browser",
                "touchpoint": {"type": "page", "path": "/search"},
                "goal": "Order Completed",
                "window_seconds": 86400,
            }
        },
    )

    @field_validator("thresholds")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 <= value[0] < value[1]:
            raise ValueError("thresholds must be [good, poor] with 0 <= good < poor")
        return value


class TrendsRequest(ZonedRange):
    goal: Step | None = Field(None, description="default: the project's first goal")
    interval: Literal["hour", "day", "week"] = "day"
    touchpoint: Step | None = Field(
        None, description="the median response time of this touchpoint's events only (default: every timed event)"
    )
    timezone: str = Field("UTC", description="IANA time zone of the hours, days and weeks")

    model_config = ConfigDict(
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={
            "example": {
                "goal": "Order Completed",
                "interval": "day",
                "touchpoint": {"type": "page", "path": "/search"},
                "from": "2026-11-01T00:00:00Z",
                "timezone": "Europe/Berlin",
            }
        },
    )


class BehaviourRequest(ZonedRange):
    goal: Step | None = Field(None, description="default: the project's first goal")
    timezone: str = Field("UTC", description="IANA time zone for hours and weekdays")

    model_config = ConfigDict(
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={"example": {"goal": "Order Completed", "timezone": "Europe/Berlin"}},
    )


def known_zone(value: str) -> str:
    """An IANA time zone this machine knows, else a ValueError (a 422 naming the field)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None
    return value


class RetentionRequest(ZonedRange):
    start: Step = Field(description="the event that puts a person in a cohort (the first in the range counts)")
    return_: Step | None = Field(
        None, alias="return", description="the event that counts as coming back; default: start again"
    )
    period: Literal["day", "week", "month"] = "week"
    periods: int = Field(8, ge=1, le=52, description="periods followed after each cohort's own")
    timezone: str = Field("UTC", description="IANA time zone of the calendar days, weeks and months")
    cohort: Literal["first_in_range", "new"] = Field(
        "first_in_range",
        description=(
            "first_in_range: a person's cohort is the period of their first start in the range; "
            "new: only people whose first start of all time is in the range (new customers: the "
            "history before `from` is read, and a segment applies to their first touchpoint of all time)"
        ),
    )

    model_config = ConfigDict(
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={
            "example": {
                "start": "Order Completed",
                "return": "Order Completed",
                "period": "week",
                "periods": 8,
                "from": "2026-09-01T00:00:00Z",
                "timezone": "Europe/Berlin",
            }
        },
    )
