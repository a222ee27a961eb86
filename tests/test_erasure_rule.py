"""The pure rule of an erasure: which events accepted before it were the erased person's."""

from __future__ import annotations

from services.core.erasure import FOREVER, NEVER, ErasedOwners, Erasure, owned_spans
from services.core.identity import Link, device_owner

AT = 1_000_000  # when the erasure ran (ms)


def event(
    anonymous_id: str, ts: int, user_id: str = "", received: int = AT - 10, project: str = "p"
) -> tuple[str, str, str, int, int]:
    return (project, anonymous_id, user_id, ts, received)


def test_spans_follow_the_owner_of_a_shared_device() -> None:
    links = [
        Link("s", "dora", 100, 150),
        Link("s", "bob", 300, 400),
        Link("s", "dora", 500, 600),
        Link("x", "bob", 1, 2),
    ]
    spans = owned_spans("dora", ["s"], links)
    assert spans == [("s", NEVER, 300), ("s", 500, FOREVER)]
    for ts in (0, 100, 299, 300, 499, 500, 10_000):  # the same answer as the identity rule
        owned = any(lo <= ts < hi for _, lo, hi in spans)
        assert owned == (device_owner([link for link in links if link.anonymous_id == "s"], ts) == "dora"), ts
    assert owned_spans("bob", ["s"], links) == [("s", 300, 500)]
    assert owned_spans("lone", ["lone"], []) == [("lone", NEVER, FOREVER)]


def test_the_erased_persons_events_accepted_before_it_and_no_others() -> None:
    dora = Erasure("p", "dora", ("s", "user:dora"), (("s", NEVER, 300),), AT)
    lone = Erasure("p", "anon-7", ("anon-7",), (("anon-7", NEVER, FOREVER),), AT)
    owners = ErasedOwners([dora, lone])
    assert owners.erasure_of(event("s", 10)) is dora  # anonymous, hers by the time
    assert owners.erasure_of(event("s", 310)) is None  # the shared browser's other user
    assert owners.erasure_of(event("new", 10, user_id="dora")) is dora  # names her, any device
    assert owners.erasure_of(event("s", 10, user_id="bob")) is None  # names someone else
    assert owners.erasure_of(event("s", 10, user_id="undefined")) is dora  # a placeholder names nobody
    assert owners.erasure_of(event("s", 10, received=AT + 1)) is None  # accepted after: she came back
    assert owners.erasure_of(event("s", 10, project="q")) is None  # another project's
    assert owners.erasure_of(event("anon-7", 5)) is lone
    assert owners.erasure_of(event("anon-7", 5, user_id="carol")) is None  # carol's, linking the device
    assert not ErasedOwners()
    owners.prune(AT + 1)
    assert not owners and owners.erasure_of(event("s", 10)) is None
