"""The test broker script itself: the parts that once made CI flaky."""

from __future__ import annotations

from services.testing import kafka_broker


def test_cluster_ids_never_look_like_options() -> None:
    # One raw base64 UUID in 64 starts with '-', which kafka-storage's argparse
    # took for a flag ("argument --cluster-id/-t: expected one argument").
    ids = [kafka_broker.new_cluster_id() for _ in range(5000)]
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 for i in ids)
    assert len(set(ids)) == len(ids)
