"""Stripe: deposits through Checkout, credited from the verified webhook (the official library).

``checkout`` creates a Checkout Session for an amount of credits (1 credit unit = 1 unit of
``CURRENCY``'s smallest denomination, e.g. a cent) and returns where to pay. Nothing is
credited then: ``verify`` checks a webhook delivery's signature and age
(``stripe.Webhook.construct_event``, 300 s tolerance) and ``credit_of`` reads what a
``checkout.session.completed`` event (or, for a delayed payment method, the later
``checkout.session.async_payment_succeeded``) pays for. The wallet adapter turns that into a
``Deposit`` keyed by the event id, so a re-delivered event is credited once.

Both calls are synchronous (the library's HTTP client blocks); the adapter runs
``checkout`` in a worker thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import stripe
from stripe.params.checkout import SessionCreateParams

from coordinator.config import Config
from coordinator.parsing import whole_number

log = logging.getLogger("tn.stripe")

CURRENCY = "usd"
PRODUCT_NAME = "Task Network credits"
# a session paid at once completes "paid"; one paid by a delayed method completes "unpaid"
# and is paid by a later async_payment_succeeded event: either credits, never both
PAID_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded")


class WebhookError(Exception):
    """A delivery we refuse (400): nothing is credited."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    id: str
    url: str


@dataclass(frozen=True, slots=True)
class Credit:
    """What a verified, paid Checkout event credits: once, under ``key``."""

    event_id: str
    account_id: str
    amount: int

    @property
    def key(self) -> str:
        return f"stripe:{self.event_id}"


class StripePay:
    def __init__(self, config: Config) -> None:
        self.config = config
        base = {"api": config.stripe_api_base} if config.stripe_api_base else None
        self.client = stripe.StripeClient(
            config.stripe_secret_key, base_addresses=base,  # type: ignore[arg-type]
            max_network_retries=1,
        )
        self.public_url = (config.public_url or f"http://{config.host}:{config.port}").rstrip("/")

    def checkout(self, account_id: str, amount: int, idempotency_key: str) -> CheckoutSession:
        """Create a Checkout Session paying ``amount`` into ``account_id``'s wallet; raises
        ``stripe.StripeError`` when Stripe refuses or cannot be reached."""
        params: SessionCreateParams = {
            "mode": "payment",
            "line_items": [{
                "quantity": 1,
                "price_data": {
                    "currency": CURRENCY,
                    "unit_amount": amount,
                    "product_data": {"name": PRODUCT_NAME},
                },
            }],
            "client_reference_id": account_id,
            "metadata": {"account_id": account_id, "amount": str(amount)},
            "success_url": f"{self.public_url}/?deposit=done&session={{CHECKOUT_SESSION_ID}}",
            "cancel_url": f"{self.public_url}/?deposit=cancelled",
        }
        session = self.client.v1.checkout.sessions.create(
            params, {"idempotency_key": idempotency_key})
        if not session.url:
            raise stripe.APIError("Stripe returned a Checkout Session without a URL")
        return CheckoutSession(session.id, session.url)

    def verify(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        """The event (as plain JSON), if ``signature`` (the Stripe-Signature header) is valid
        and recent."""
        try:
            event: stripe.Event = stripe.Webhook.construct_event(
                payload, signature, self.config.stripe_webhook_secret
            )
        except stripe.SignatureVerificationError as exc:
            raise WebhookError(f"bad Stripe-Signature: {exc}") from None
        except ValueError as exc:  # the library's "not JSON"
            raise WebhookError(f"the payload is not a Stripe event: {exc}") from None
        return event.to_dict()


def credit_of(event: dict[str, Any], amount_max: int) -> Credit | None:
    """What a verified event credits, or None for an event that credits nothing (another
    type, or a session not paid). Raises ``WebhookError`` for a paid session whose
    metadata we cannot trust (it was not made by ``StripePay.checkout``)."""
    if event.get("type") not in PAID_EVENTS:
        return None
    obj: Any = (event.get("data") or {}).get("object") or {}
    if obj.get("payment_status") != "paid":
        return None
    metadata = obj.get("metadata") or {}
    account_id = metadata.get("account_id")
    raw = metadata.get("amount")
    total = obj.get("amount_total")
    if not isinstance(account_id, str) or not account_id:
        raise WebhookError("the session's metadata has no account_id")
    amount = whole_number(raw) if isinstance(raw, str) else None
    if amount is None:
        raise WebhookError(f"the session's metadata amount {raw!r} is not a whole number")
    if type(total) is not int or total != amount:
        raise WebhookError(f"the session's amount_total {total!r} is not its metadata amount "
                           f"{raw}")
    if not 0 < total <= amount_max:
        raise WebhookError(f"the amount {total} is outside 1..{amount_max}")
    if obj.get("currency") not in (None, CURRENCY):
        raise WebhookError(f"the session was paid in {obj.get('currency')!r}, not {CURRENCY}")
    event_id = event.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise WebhookError("the event has no id")
    return Credit(event_id, account_id, total)
