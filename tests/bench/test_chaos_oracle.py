"""The chaos oracle's pure parts, without servers."""

from __future__ import annotations

import json
import random

from bench import chaos


def test_a_malformed_message_tag_is_read_whole_from_a_dead_letter_body() -> None:
    payload = json.dumps({"kind": "video.queued", "tenant_id": 1, "chaos": "fault-31"})
    for body in (payload, json.dumps({"args": [payload]})):
        assert chaos._CHAOS_TAG.findall(body) == ["fault-31"]
        # "fault-3" is a prefix of the tag, not the tag: counting it would double letters
        assert "fault-3" not in chaos._CHAOS_TAG.findall(body)


def test_an_import_goes_out_in_order_from_one_producer_thread() -> None:
    config = chaos.ChaosConfig(seed=7, duration_s=60, videos=10, imports=3, malformed=2)
    producers = chaos.Producers.__new__(chaos.Producers)
    producers.config = config
    producers.rng = random.Random(config.seed)
    plan = producers._plan()
    groups: dict[int, list[float]] = {}
    for at, _, group in plan:
        if group is not None:
            groups.setdefault(group, []).append(at)
    assert sorted(groups) == [0, 1, 2]
    for times in groups.values():
        assert times == sorted(times)
        assert len(set(times)) == len(times)
    # every send is its own timed item, so none holds its thread past the load's window
    assert max(at for at, _, _ in plan) < config.duration_s
