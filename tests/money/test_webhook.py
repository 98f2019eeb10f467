"""Stripe webhooks: signatures built by hand with Stripe's documented scheme
(``t=<ts>,v1=<HMAC-SHA256(secret, "<ts>.<payload>")>``) and checked by the official library;
forged, stale and replayed deliveries; what a verified event credits."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import stripe

from coordinator.config import Config
from coordinator.core import effects as fx
from coordinator.core.core import Core, CoreConfig
from coordinator.core.events import Deposit
from coordinator.core.ledger import wallet
from coordinator.stripe_pay import Credit, StripePay, WebhookError, credit_of
from tests.e2e.stripe_standin import checkout_completed, signature_header

SECRET = "whsec_unit_test"
MAX = 10**12


@pytest.fixture
def pay() -> StripePay:
    config = dataclasses.replace(Config(), stripe_secret_key="sk_test_unit",
                                 stripe_webhook_secret=SECRET, public_url="https://tn.example/")
    assert config.stripe_enabled
    return StripePay(config)


def payload(event_id: str = "evt_1", amount: int = 1234, **kw: object) -> bytes:
    return checkout_completed(event_id, "cs_1", "a_alice", amount, **kw)  # type: ignore[arg-type]


def test_the_hand_made_header_is_stripes_scheme(pay: StripePay) -> None:
    body = payload()
    ts = int(time.time())
    header = signature_header(body, SECRET, ts)
    assert header == stripe.WebhookSignature.generate_signature_header(body.decode(), SECRET, ts)
    event = pay.verify(body, header)
    assert event["id"] == "evt_1" and event["type"] == "checkout.session.completed"
    assert credit_of(event, MAX) == Credit("evt_1", "a_alice", 1234)
    assert credit_of(event, MAX).key == "stripe:evt_1"  # type: ignore[union-attr]


@pytest.mark.parametrize("case", ["forged", "stale", "tampered", "missing", "garbled",
                                  "other scheme", "empty"])
def test_bad_signatures_are_refused(pay: StripePay, case: str) -> None:
    body = payload()
    now = int(time.time())
    header: str | None = {
        "forged": signature_header(body, "whsec_attacker", now),
        "stale": signature_header(body, SECRET, now - 301),  # the library's tolerance: 300 s
        "tampered": signature_header(payload(amount=1), SECRET, now),
        "missing": None,
        "garbled": "t=soon,v1=abc",
        "other scheme": signature_header(body, SECRET, now).replace("v1=", "v0="),
        "empty": "",
    }[case]
    with pytest.raises(WebhookError, match="Stripe-Signature"):
        pay.verify(body, header)


def test_a_signed_payload_that_is_not_json_is_refused(pay: StripePay) -> None:
    body = b"{not json"
    with pytest.raises(WebhookError, match="not a Stripe event"):
        pay.verify(body, signature_header(body, SECRET))


def test_within_tolerance_is_accepted(pay: StripePay) -> None:
    body = payload()
    assert pay.verify(body, signature_header(body, SECRET, int(time.time()) - 250))["id"]


def test_what_credits_and_what_does_not() -> None:
    def event(**kw: object) -> dict[str, object]:
        doc: dict[str, object] = json.loads(payload(**kw))
        return doc

    assert credit_of(event(paid=False), MAX) is None
    assert credit_of(event(event_type="checkout.session.expired"), MAX) is None
    assert credit_of(event(event_type="payment_intent.succeeded"), MAX) is None
    late = credit_of(event(event_type="checkout.session.async_payment_succeeded"), MAX)
    assert late == Credit("evt_1", "a_alice", 1234)
    for bad in ("1.5", "-3", "", "12abc", "999"):
        with pytest.raises(WebhookError, match=r"metadata amount|amount_total"):
            credit_of(event(metadata_amount=bad), MAX)
    with pytest.raises(WebhookError, match="outside"):
        credit_of(event(amount=MAX + 1), MAX)
    doc = event()
    doc["data"]["object"]["metadata"] = {"amount": "1234"}  # type: ignore[index]
    with pytest.raises(WebhookError, match="account_id"):
        credit_of(doc, MAX)
    doc = event()
    doc["data"]["object"]["amount_total"] = 1234.0  # type: ignore[index]
    with pytest.raises(WebhookError, match="amount_total"):
        credit_of(doc, MAX)


def test_a_replayed_event_is_credited_once() -> None:
    """The same verified delivery, three times: one Deposit under one key in the core."""
    core = Core(CoreConfig(), epoch=1)
    credit = Credit("evt_9", "a_alice", 500)
    statuses = []
    for eid in (1, 2, 3):
        effects = core.handle(Deposit(eid, eid, credit.account_id, credit.amount, credit.key,
                                      "stripe"))
        statuses += [e.status for e in effects if isinstance(e, fx.Reply)]
    assert statuses == [201, 200, 200]
    assert core.treasury.ledger.balance(wallet("a_alice")) == 500
