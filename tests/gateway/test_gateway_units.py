"""Gateway pieces on their own: webhook signing and SSRF guard, retry schedule, the Redis
token bucket, SSE framing, and the client's event parser."""

from __future__ import annotations

import json

import pytest
from standardwebhooks import Webhook

from gateway import limits, webhooks
from gateway.client import _parse_sse
from gateway.sse import frame
from kit.errors import InvalidInput


def test_signature_verifies_with_standard_webhooks() -> None:
    secret = webhooks.new_secret()
    body = json.dumps({"type": "request.succeeded", "data": {"id": "req_1"}}).encode()
    import time

    ts = int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(ts),
               "webhook-signature": webhooks.signature(secret, "msg_1", ts, body)}
    assert Webhook(secret).verify(body, headers)["data"]["id"] == "req_1"
    with pytest.raises(Exception):  # noqa: B017 - the library's own verification error
        Webhook(webhooks.new_secret()).verify(body, headers)


@pytest.mark.parametrize("url", ["http://127.0.0.1/hook", "http://localhost:8080/x", "http://10.1.2.3/",
                                 "http://192.168.0.1/", "http://169.254.169.254/latest/meta-data",
                                 "http://[::1]/", "ftp://example.com/", "http:///nohost"])
def test_private_loopback_and_link_local_targets_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput):
        webhooks.check_url(url, allow_private=False)


def test_public_targets_pass_and_tests_may_allow_private() -> None:
    webhooks.check_url("http://8.8.8.8/hook", allow_private=False)
    webhooks.check_url("http://127.0.0.1:9/hook", allow_private=True)


def test_retries_back_off_for_more_than_a_day() -> None:
    total = sum(webhooks.SCHEDULE_S)
    assert total >= 24 * 3600
    waits = [webhooks.backoff_s(n) for n in range(1, len(webhooks.SCHEDULE_S) + 1)]
    assert all(0.8 * s <= w <= 1.2 * s for w, s in zip(waits, webhooks.SCHEDULE_S, strict=True))
    assert webhooks.backoff_s(len(webhooks.SCHEDULE_S) + 1) is None


def test_event_names_normalise_and_unknown_ones_are_refused() -> None:
    assert webhooks.normalise_events(["completed"]) == list(webhooks.TERMINAL)
    assert webhooks.normalise_events(["started", "request.failed", "failed"]) == ["request.started", "request.failed"]
    assert webhooks.normalise_events(None) is None
    with pytest.raises(InvalidInput):
        webhooks.normalise_events(["sometimes"])


def test_token_bucket_refuses_past_the_burst_and_says_when(redis_client) -> None:  # type: ignore[no-untyped-def]
    def charge(bucket: str) -> limits.Charge:
        return limits.Charge({}, bucket, rate_per_s=0.5, burst=3)

    verdicts = [limits.take(charge("t:1")) for _ in range(5)]
    assert [v.allowed for v in verdicts] == [True, True, True, False, False]
    assert [v.remaining for v in verdicts[:3]] == [2, 1, 0]
    refused = verdicts[3]
    # The next token comes 2 s after the burst at 0.5/s, less what refilled while the calls
    # ran: a collector pause in a long test process has taken a second of that.
    assert refused.retry_after_s in (1, 2)
    assert refused.headers()["Retry-After"] == str(refused.retry_after_s)
    assert refused.headers()["RateLimit-Policy"] == "3;w=6"
    assert limits.take(charge("t:2")).allowed  # buckets are per key
    # Many charges in one round trip take tokens in order, bucket by bucket.
    batch = limits.take_many([charge("t:3"), charge("t:4"), charge("t:3"), charge("t:3"), charge("t:3")])
    assert [v.allowed for v in batch] == [True, True, True, True, False]
    assert [v.remaining for v in batch] == [2, 2, 1, 0, 0]


def test_sse_frames_round_trip_through_the_client_parser() -> None:
    raw = frame("progress", {"done": 1, "total": 3}, "17-0") + frame("done", {"status": "succeeded"})
    lines = raw.decode().split("\n")
    partial: dict[str, str] = {}
    events = []
    for line in lines:
        event = _parse_sse([line], partial)
        if event:
            events.append(event)
    assert events == [{"id": "17-0", "event": "progress", "data": {"done": 1, "total": 3}},
                      {"id": None, "event": "done", "data": {"status": "succeeded"}}]
