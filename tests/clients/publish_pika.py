#!/usr/bin/env python3
"""Publishes one Warren event with Python's pika, following only docs/protocol.md.

Usage: publish_pika.py AMQP_URL NAMESPACE EVENT MESSAGE_ID JSON_PAYLOAD
Exits 0 once the broker has confirmed and routed the message, non-zero otherwise.
"""
import datetime
import json
import sys

import pika


def main() -> int:
    url, namespace, event, message_id, payload = sys.argv[1:6]
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()  # publisher confirms: basic_publish raises on nack or return
    published_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
    properties = pika.BasicProperties(
        content_type="application/json",
        delivery_mode=2,  # persistent
        message_id=message_id,
        headers={
            "warren-published-at": published_at.replace("+00:00", "Z"),
            "warren-tenant": "python-tenant",
            "warren-idempotency-key": f"py-{message_id}",
        },
    )
    try:
        channel.basic_publish(
            exchange=f"{namespace}.events",
            routing_key=event,
            body=json.dumps(json.loads(payload)).encode("utf-8"),
            properties=properties,
            mandatory=True,  # an event no task listens to comes back as an error
        )
    except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as error:
        print(f"publish failed: {error!r}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
