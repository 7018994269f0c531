"""Regenerate examples/events.jsonl: a sample storefront stream (deterministic).

    python examples/make_events.py > examples/events.jsonl
"""

from __future__ import annotations

import random
import sys
from datetime import UTC, datetime, timedelta

import orjson

FIRST = ["Shah", "Ana", "Jonas", "Mei", "Lukas", "Amara", "Diego", "Sofia", "Ken", "Leila", "Noah", "Ivy"]
LAST = ["Rahman", "Silva", "Berg", "Chen", "Novak", "Okafor", "Ruiz", "Rossi", "Sato", "Haddad", "Kim"]
CITIES = [("Springfield", "US"), ("Portland", "US"), ("Austin", "US"), ("Toronto", "CA"), ("Berlin", "DE")]
PRODUCTS = [
    ("A1", "Linen shirt", 49.0),
    ("B7", "Wool socks", 12.5),
    ("C3", "Rain jacket", 139.0),
    ("D2", "Canvas tote", 24.0),
    ("E9", "Leather boots", 189.0),
]
START = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def profile(rng: random.Random, n: int) -> dict:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    city, country = rng.choice(CITIES)
    props = {"address": f"{rng.randint(1, 999)} {rng.choice(['Main', 'Oak', 'Elm', 'Pine'])} St",
             "city": city, "country": country, "vip": rng.random() < 0.15}
    if rng.random() < 0.3:
        props["birthday"] = f"{rng.randint(1960, 2004)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if rng.random() < 0.1:
        del props["address"]  # not every profile has a postal address
    person = {"id": f"p_{n:05d}", "email": f"{first.lower()}.{last.lower()}{n}@example.com",
              "first_name": first, "last_name": last, "properties": props}
    if rng.random() < 0.08:  # known only by email, in whatever case the storefront sent
        del person["id"]
        person["email"] = person["email"].title()
    if rng.random() < 0.5:
        person["phone_number"] = f"+1555{rng.randint(1000000, 9999999)}"
    return person


def cart(rng: random.Random) -> tuple[list[dict], list[str], float]:
    picks = rng.sample(PRODUCTS, rng.randint(1, 3))
    items = [
        {"sku": sku, "name": name, "qty": rng.randint(1, 3), "price": price} for sku, name, price in picks
    ]
    return items, [i["name"] for i in items], round(sum(i["qty"] * i["price"] for i in items), 2)


def events_for(rng: random.Random, person: dict, clock: datetime, counter: list[int]) -> list[dict]:
    def event(metric: str, at: datetime, props: dict) -> dict:
        counter[0] += 1
        return {"id": f"evt_{counter[0]:06d}", "metric": metric,
                "time": at.isoformat().replace("+00:00", "Z"), "profile": person, "properties": props}

    out = [event("Viewed Product", clock, {"ProductID": rng.choice(PRODUCTS)[0]})]
    if rng.random() < 0.3:
        out.append(event("Subscribed to List", clock + timedelta(minutes=1),
                         {"list_id": "newsletter", "$source": rng.choice(["footer", "popup", "checkout"])}))
    for _ in range(rng.randint(0, 2)):
        clock += timedelta(hours=rng.randint(1, 48))
        items, names, value = cart(rng)
        out.append(event("Started Checkout", clock, {"$value": value, "Items": items, "ItemNames": names,
                                                    "CheckoutURL": f"https://shop.example.com/cart/{counter[0]}"}))
        if rng.random() < 0.6:
            order_id = str(100000 + counter[0])
            out.append(event("Placed Order", clock + timedelta(minutes=rng.randint(2, 30)),
                             {"OrderId": order_id, "$value": value, "Items": items, "ItemNames": names}))
            if rng.random() < 0.5:
                out.append(event("Order Delivered", clock + timedelta(days=rng.randint(2, 5)),
                                 {"OrderId": order_id}))
    return out


def main() -> None:
    rng = random.Random(42)
    counter = [0]
    stream: list[dict] = []
    for n in range(900):
        person = profile(rng, n)
        stream += events_for(rng, person, START + timedelta(minutes=rng.randint(0, 5000)), counter)
    stream.sort(key=lambda e: e["time"])
    stream += rng.sample(stream, 25)  # replays: the same event id twice is one event
    for event in stream:
        sys.stdout.buffer.write(orjson.dumps(event) + b"\n")


if __name__ == "__main__":
    main()
