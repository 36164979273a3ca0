"""The smallest stateful stand-in for the parts of Stripe's HTTP API that localstripe lacks.

Connect accounts, transfers (and reversals), invoices with finalize and pay, invoice items on
those invoices, and connected-account payouts live here; everything else (customers,
payment methods, payment intents…) is forwarded to a localstripe process. In front of both
sits Stripe's idempotency layer: a POST with a seen `Idempotency-Key` replays the first
response, and the same key with different parameters is an `idempotency_error`, as Stripe
does. Objects are Stripe's published fixtures (templates.json, taken from
stripe/openapi's fixtures3.json, MIT) with the fields this stand-in manages filled in.

Test controls, under `/_config/`:
- `POST /_config/webhooks/{id}` (url, secret[, events]): sign and deliver events there.
- `POST /_config/faults` JSON {path, mode, count}: the next `count` POSTs to `path` fail:
  `fail_before` (500, nothing done), `fail_after` (done or replayed, then 500), `hang_after`
  (done or replayed, then the answer is held past any client timeout).
- `GET /_config/log`: every POST seen, with its idempotency key and whether it was replayed.

Run: python tests/fakes/stripe_connect/server.py --port 8421 --upstream http://127.0.0.1:8420
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TEMPLATES = json.loads((Path(__file__).resolve().parent / "templates.json").read_text())


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def decode_form(body: str) -> dict[str, Any]:
    """Stripe's bracketed form encoding (`metadata[k]=v`, `expand[0]=x`) as nested data."""
    out: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = key.replace("]", "").split("[")
        node: Any = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt = parts[i + 1] if not last else None
            if isinstance(node, list):
                index = int(part) if part.isdigit() else len(node)
                while len(node) <= index:
                    node.append(None)
                if last:
                    node[index] = value
                else:
                    if node[index] is None:
                        node[index] = [] if (nxt == "" or (nxt or "").isdigit()) else {}
                    node = node[index]
            else:
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, [] if (nxt == "" or (nxt or "").isdigit()) else {})
    return out


def error(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "message": message, "code": code}}, status_code=status)


class Stripe:
    """The stand-in's state."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.objects: dict[str, dict[str, Any]] = {}
        self.idempotency: dict[str, tuple[str, int, bytes]] = {}
        self.webhooks: dict[str, dict[str, Any]] = {}
        self.faults: list[dict[str, Any]] = []
        self.log: list[dict[str, Any]] = []
        self.payment_methods: dict[str, bool] = {}
        self.http = httpx.AsyncClient(timeout=30)

    def new(self, kind: str, prefix: str, **fields: Any) -> dict[str, Any]:
        obj = copy.deepcopy(TEMPLATES[kind])
        obj.update(id=_id(prefix), created=int(time.time()), livemode=False, metadata={})
        obj.update(fields)
        self.objects[obj["id"]] = obj
        return obj

    def get(self, obj_id: str, kind: str) -> dict[str, Any] | None:
        obj = self.objects.get(obj_id)
        return obj if obj is not None and obj.get("object") == kind else None

    async def emit(self, type_: str, obj: dict[str, Any]) -> None:
        event = self.new("event", "evt", type=type_, data={"object": copy.deepcopy(obj)}, api_version=None,
                         pending_webhooks=len(self.webhooks), request={"id": None, "idempotency_key": None})
        for hook in list(self.webhooks.values()):
            if hook.get("events") and type_ not in hook["events"]:
                continue
            payload = json.dumps(event)
            stamp = int(time.time())
            sig = hmac.new(hook["secret"].encode(), f"{stamp}.{payload}".encode(), hashlib.sha256).hexdigest()
            asyncio.get_running_loop().create_task(self._deliver(hook["url"], payload, f"t={stamp},v1={sig}"))

    async def _deliver(self, url: str, payload: str, signature: str) -> None:
        for attempt in range(5):  # Stripe retries failed deliveries; a few quick ones are enough here
            try:
                r = await self.http.post(url, content=payload, headers={
                    "Content-Type": "application/json", "Stripe-Signature": signature})
                if r.status_code < 300:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2 * (attempt + 1))


# -- resources --------------------------------------------------------------------------------

async def create_account(s: Stripe, p: dict[str, Any], _: Request) -> JSONResponse:
    acct = s.new("account", "acct", type=p.get("type", "express"), email=p.get("email"),
                 country=p.get("country", "US"), default_currency=p.get("default_currency", "usd"),
                 metadata=p.get("metadata") or {}, charges_enabled=True, payouts_enabled=True,
                 details_submitted=True, capabilities={"card_payments": "inactive", "transfers": "active"})
    acct["external_accounts"]["url"] = f"/v1/accounts/{acct['id']}/external_accounts"
    acct["_balance"] = 0
    return JSONResponse(_public(acct))


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def _amount(p: dict[str, Any], name: str = "amount") -> int | None:
    try:
        return int(p[name])
    except (KeyError, ValueError, TypeError):
        return None


async def create_transfer(s: Stripe, p: dict[str, Any], _: Request) -> JSONResponse:
    amount, dest = _amount(p), p.get("destination")
    if amount is None or amount <= 0:
        return error(400, "Invalid positive integer", code="parameter_invalid_integer")
    acct = s.get(dest or "", "account")
    if acct is None:
        return error(400, f"No such destination: '{dest}'", code="account_invalid")
    tr = s.new("transfer", "tr", amount=amount, currency=p.get("currency", "usd"), destination=dest,
               description=p.get("description"), transfer_group=p.get("transfer_group"),
               metadata=p.get("metadata") or {}, amount_reversed=0, reversed=False, source_transaction=None,
               balance_transaction=_id("txn"), destination_payment=_id("py"))
    tr["reversals"] = {"object": "list", "data": [], "has_more": False, "url": f"/v1/transfers/{tr['id']}/reversals"}
    acct["_balance"] += amount
    await s.emit("transfer.created", tr)
    return JSONResponse(tr)


async def reverse_transfer(s: Stripe, p: dict[str, Any], req: Request) -> JSONResponse:
    tr = s.get(req.path_params["id"], "transfer")
    if tr is None:
        return error(404, "No such transfer", code="resource_missing")
    amount = _amount(p) or tr["amount"] - tr["amount_reversed"]
    if amount <= 0 or amount > tr["amount"] - tr["amount_reversed"]:
        return error(400, "Amount exceeds what is left to reverse")
    rev = s.new("transfer_reversal", "trr", amount=amount, currency=tr["currency"], transfer=tr["id"],
                metadata=p.get("metadata") or {}, balance_transaction=_id("txn"), destination_payment_refund=None,
                source_refund=None)
    tr["amount_reversed"] += amount
    tr["reversed"] = tr["amount_reversed"] == tr["amount"]
    tr["reversals"]["data"].append(rev)
    s.objects[tr["destination"]]["_balance"] -= amount
    await s.emit("transfer.reversed", tr)
    return JSONResponse(rev)


async def list_transfers(s: Stripe, req: Request) -> JSONResponse:
    q = dict(req.query_params)
    data = [o for o in s.objects.values() if o["object"] == "transfer"
            and all(o.get(k) == q[k] for k in ("transfer_group", "destination") if k in q)]
    data.sort(key=lambda o: o["created"], reverse=True)
    return JSONResponse({"object": "list", "data": data[: int(q.get("limit", 10))], "has_more": False,
                         "url": "/v1/transfers"})


def _totals(inv: dict[str, Any]) -> None:
    total = sum(line["amount"] for line in inv["lines"]["data"])
    inv.update(subtotal=total, subtotal_excluding_tax=total, total=total, total_excluding_tax=total,
               amount_due=max(total, 0), amount_remaining=max(total, 0) - inv["amount_paid"])


async def create_invoice(s: Stripe, p: dict[str, Any], _: Request) -> JSONResponse:
    customer = p.get("customer", "")
    found = await s.http.get(f"{s.upstream}/v1/customers/{customer}", headers={"Authorization": "Bearer sk_test"})
    if found.status_code != 200:
        return error(404, f"No such customer: '{customer}'", code="resource_missing")
    cust = found.json()
    now = int(time.time())
    inv = s.new("invoice", "in", customer=customer, currency=p.get("currency", "usd"), status="draft",
                description=p.get("description"), metadata=p.get("metadata") or {},
                collection_method=p.get("collection_method", "charge_automatically"),
                auto_advance=p.get("auto_advance") == "true", amount_paid=0, attempt_count=0, attempted=False,
                billing_reason="manual", customer_email=cust.get("email"), customer_name=cust.get("name"),
                number=None, hosted_invoice_url=None, invoice_pdf=None, period_start=now, period_end=now,
                effective_at=None, due_date=None, next_payment_attempt=None, webhooks_delivered_at=None,
                last_finalization_error=None, ending_balance=None, starting_balance=0, amount_overpaid=0,
                shipping_cost=None, parent=None, from_invoice=None, latest_revision=None,
                status_transitions={"finalized_at": None, "marked_uncollectible_at": None, "paid_at": None,
                                    "voided_at": None})
    inv["lines"] = {"object": "list", "data": [], "has_more": False, "url": f"/v1/invoices/{inv['id']}/lines"}
    _totals(inv)
    return JSONResponse(inv)


async def create_invoice_item(s: Stripe, p: dict[str, Any], req: Request, raw: bytes) -> Response:
    invoice_id = p.get("invoice")
    inv = s.get(invoice_id or "", "invoice")
    if inv is None:  # a pending item for a customer: localstripe keeps those
        return await forward(s, req, raw)
    if inv["status"] != "draft":
        return error(400, "You can only add invoice items to draft invoices.", code="invoice_not_editable")
    amount = _amount(p)
    if amount is None:
        return error(400, "Missing required param: amount.", code="parameter_missing")
    now = int(time.time())
    item = s.new("invoiceitem", "ii", amount=amount, currency=p.get("currency", inv["currency"]),
                 customer=inv["customer"], invoice=inv["id"], description=p.get("description"),
                 metadata=p.get("metadata") or {}, date=now, period={"start": now, "end": now}, quantity=1,
                 net_amount=amount, quantity_decimal="1", parent=None, proration=False)
    line = copy.deepcopy(TEMPLATES["line_item"])
    line.update(id=_id("il"), amount=amount, currency=item["currency"], description=item["description"],
                invoice=inv["id"], metadata=item["metadata"], period=item["period"], quantity=1,
                subtotal=amount, quantity_decimal="1", livemode=False, subscription=None)
    line["parent"] = {"type": "invoice_item_details", "subscription_item_details": None,
                      "invoice_item_details": {"invoice_item": item["id"], "proration": False,
                                               "proration_details": {"credited_items": None},
                                               "subscription": None}}
    inv["lines"]["data"].append(line)
    _totals(inv)
    return JSONResponse(item)


async def finalize_invoice(s: Stripe, _: dict[str, Any], req: Request) -> JSONResponse:
    inv = s.get(req.path_params["id"], "invoice")
    if inv is None:
        return error(404, "No such invoice", code="resource_missing")
    if inv["status"] != "draft":
        return error(400, "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
                     code="invoice_already_finalized")
    now = int(time.time())
    inv.update(status="open" if inv["amount_due"] > 0 else "paid", number=f"MG-{len(s.objects):06d}",
               effective_at=now, due_date=now, hosted_invoice_url=f"https://invoice.stripe.test/{inv['id']}",
               invoice_pdf=f"https://invoice.stripe.test/{inv['id']}/pdf")
    inv["status_transitions"]["finalized_at"] = now
    if inv["status"] == "paid":
        inv["status_transitions"]["paid_at"] = now
    await s.emit("invoice.finalized", inv)
    return JSONResponse(inv)


async def pay_invoice(s: Stripe, p: dict[str, Any], req: Request) -> JSONResponse:
    inv = s.get(req.path_params["id"], "invoice")
    if inv is None:
        return error(404, "No such invoice", code="resource_missing")
    if inv["status"] == "paid":
        return error(400, "Invoice is already paid", code="invoice_already_paid")
    if inv["status"] != "open":
        return error(400, "You can only pay open invoices.", code="invoice_not_open")
    inv["attempt_count"] += 1
    inv["attempted"] = True
    if p.get("paid_out_of_band") != "true":
        cust = (await s.http.get(f"{s.upstream}/v1/customers/{inv['customer']}",
                                 headers={"Authorization": "Bearer sk_test"})).json()
        pm = (cust.get("invoice_settings") or {}).get("default_payment_method") or cust.get("default_source")
        if not pm:
            await s.emit("invoice.payment_failed", inv)
            return error(402, "The customer has no attached payment source or default payment method.",
                         type_="card_error", code="invoice_no_customer_payment_method")
    now = int(time.time())
    inv.update(status="paid", amount_paid=inv["amount_due"], amount_remaining=0)
    inv["status_transitions"]["paid_at"] = now
    await s.emit("invoice.paid", inv)
    return JSONResponse(inv)


async def create_payout(s: Stripe, p: dict[str, Any], req: Request) -> JSONResponse:
    acct = s.get(req.headers.get("stripe-account", ""), "account")
    if acct is None:
        return error(400, "Payouts from the platform balance are not simulated; pass Stripe-Account")
    amount = _amount(p)
    if amount is None or amount <= 0 or amount > acct["_balance"]:
        return error(400, "Insufficient funds in the connected account", code="balance_insufficient")
    acct["_balance"] -= amount
    po = s.new("payout", "po", amount=amount, currency=p.get("currency", "usd"), status="paid",
               destination=_id("ba"), arrival_date=int(time.time()), automatic=False, method="standard",
               metadata=p.get("metadata") or {}, description=p.get("description"), failure_code=None,
               failure_message=None, balance_transaction=_id("txn"), reversed_by=None, original_payout=None,
               failure_balance_transaction=None, application_fee=None, application_fee_amount=None,
               trace_id={"status": "supported", "value": None}, payout_method=None)
    await s.emit("payout.paid", po)
    return JSONResponse(po)


async def balance(s: Stripe, req: Request) -> JSONResponse:
    obj = copy.deepcopy(TEMPLATES["balance"])
    acct = s.get(req.headers.get("stripe-account", ""), "account")
    if acct is not None:
        obj["available"][0]["amount"] = acct["_balance"]
    return JSONResponse(obj)


async def retrieve(s: Stripe, req: Request) -> Response:
    obj = s.objects.get(req.path_params["id"])
    if obj is None:
        return await forward(s, req, b"")
    return JSONResponse(_public(obj))


async def invoice_lines(s: Stripe, req: Request) -> JSONResponse:
    inv = s.get(req.path_params["id"], "invoice")
    if inv is None:
        return error(404, "No such invoice", code="resource_missing")
    return JSONResponse(inv["lines"])


async def forward(s: Stripe, req: Request, raw: bytes) -> Response:
    headers = {k: v for k, v in req.headers.items() if k.lower() in ("authorization", "content-type")}
    r = await s.http.request(req.method, f"{s.upstream}{req.url.path}", params=dict(req.query_params),
                             content=raw or None, headers=headers)
    return Response(r.content, status_code=r.status_code, media_type="application/json")


POSTS = {
    "/v1/accounts": create_account, "/v1/transfers": create_transfer, "/v1/invoices": create_invoice,
    "/v1/payouts": create_payout,
}
ACTIONS = {"reversals": ("/v1/transfers/", reverse_transfer), "finalize": ("/v1/invoices/", finalize_invoice),
           "pay": ("/v1/invoices/", pay_invoice)}


def build_app(upstream: str) -> Starlette:
    s = Stripe(upstream)

    async def handle_post(req: Request) -> Response:
        raw = await req.body()
        params = decode_form(raw.decode())
        path = req.url.path
        key = req.headers.get("idempotency-key")
        entry = {"path": path, "idempotency_key": key, "replayed": False}
        s.log.append(entry)
        fault = next((f for f in s.faults if f["count"] > 0 and path.startswith(f["path"])), None)
        if fault and fault["mode"] == "fail_before":
            fault["count"] -= 1
            return error(500, "An unknown error occurred", type_="api_error")
        digest = hashlib.sha256(path.encode() + b"?" + raw).hexdigest()
        if key and key in s.idempotency:
            first_digest, status, body = s.idempotency[key]
            if first_digest != digest:
                return error(400, "Keys for idempotent requests can only be used with the same parameters "
                                  "they were first used with.", type_="idempotency_error")
            entry["replayed"] = True
            response: Response = Response(body, status_code=status, media_type="application/json",
                                          headers={"Idempotent-Replayed": "true"})
        else:
            response = await dispatch(path, params, req, raw)
            if key and response.status_code < 500:
                s.idempotency[key] = (digest, response.status_code, bytes(response.body))
        # The work is done (or replayed); only the answer is lost on the way back.
        if fault and fault["mode"] in ("fail_after", "hang_after"):
            fault["count"] -= 1
            if fault["mode"] == "hang_after":
                await asyncio.sleep(fault.get("seconds", 5))
            return error(500, "An unknown error occurred", type_="api_error")
        return response

    async def dispatch(path: str, params: dict[str, Any], req: Request, raw: bytes) -> Response:
        if path in POSTS:
            return await POSTS[path](s, params, req)
        if path == "/v1/invoiceitems":
            return await create_invoice_item(s, params, req, raw)
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[3] in ACTIONS and path.startswith(ACTIONS[parts[3]][0]):
            req.path_params["id"] = parts[2]
            return await ACTIONS[parts[3]][1](s, params, req)
        return await forward(s, req, raw)

    async def handle_get(req: Request) -> Response:
        path = req.url.path
        if path == "/v1/transfers":
            return await list_transfers(s, req)
        if path == "/v1/balance":
            return await balance(s, req)
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[1] == "invoices" and parts[3] == "lines":
            req.path_params["id"] = parts[2]
            return await invoice_lines(s, req)
        if len(parts) == 3:
            req.path_params["id"] = parts[2]
            return await retrieve(s, req)
        return await forward(s, req, b"")

    async def config_webhook(req: Request) -> JSONResponse:
        p = decode_form((await req.body()).decode())
        events = p.get("events")
        s.webhooks[req.path_params["id"]] = {"url": p["url"], "secret": p["secret"],
                                             "events": events.split(",") if isinstance(events, str) else events}
        # localstripe takes the same call: keep both in step.
        await s.http.post(f"{s.upstream}/_config/webhooks/{req.path_params['id']}",
                          content=await req.body(), headers={"Content-Type": "application/x-www-form-urlencoded"})
        return JSONResponse({"ok": True})

    async def config_faults(req: Request) -> JSONResponse:
        fault = await req.json()
        fault.setdefault("count", 1)
        s.faults.append(fault)
        return JSONResponse({"ok": True})

    async def config_log(_: Request) -> JSONResponse:
        return JSONResponse(s.log)

    async def router(req: Request) -> Response:
        if req.method == "POST":
            return await handle_post(req)
        if req.method == "GET":
            return await handle_get(req)
        return await forward(s, req, await req.body())

    return Starlette(routes=[
        Route("/_config/webhooks/{id}", config_webhook, methods=["POST"]),
        Route("/_config/faults", config_faults, methods=["POST"]),
        Route("/_config/log", config_log, methods=["GET"]),
        Route("/{path:path}", router, methods=["GET", "POST", "DELETE"]),
    ])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="localstripe's base URL")
    args = parser.parse_args()
    uvicorn.run(build_app(args.upstream), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
