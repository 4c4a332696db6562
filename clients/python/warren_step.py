"""Warren HTTP steps for Python (3.9+), standard library only: verify the signature of the
request Warren sends, run your handler, and turn what it returns or raises into the answer
Warren expects. The wire format is docs/steps.md in the Warren repository.

    import warren_step

    def validate(request):
        if "url" not in request["input"]:
            raise warren_step.StepError("invalid_input", "no url", retryable=False)
        return {"output": {"ok": True}, "stage": "VALIDATED"}

    warren_step.serve({"/steps/validate": validate}, port=8080)  # secret: WARREN_STEP_SECRET
"""

import hashlib
import hmac
import json
import math
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_TOLERANCE_SECONDS",
    "PRIORITIES",
    "publish_properties",
    "StepError",
    "make_handler",
    "respond",
    "serve",
    "sign",
    "verify_signature",
]

#: How far a request's timestamp may be from this machine's clock, unless told otherwise.
DEFAULT_TOLERANCE_SECONDS = 300
#: The largest request body read by the server, unless told otherwise.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
_REPLY_KEYS = {"output", "stage", "halt", "wait_seconds", "emit", "logs"}
#: The priorities a message may carry in its ``warren-priority`` header.
PRIORITIES = ("high", "normal", "low")


class StepError(Exception):
    """A step failure with a code and whether a retry can help. Raise it from a handler:
    ``raise StepError("invalid_input", "no url", retryable=False)``; ``logs`` (a list of
    strings) go to the run's log with the failure. Other exceptions are retryable, with their
    ``code`` and ``retryable`` attributes if they have them."""

    def __init__(self, code, message, retryable=True, retry_after_seconds=None, logs=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after_seconds = retry_after_seconds
        self.logs = logs


def _bytes(value):
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def sign(secret, timestamp, raw_body):
    """The ``Warren-Signature`` value for ``raw_body`` sent at ``timestamp`` (Unix seconds):
    ``t={timestamp},v1={hex HMAC-SHA256(secret, "{timestamp}.{raw_body}")}``."""
    mac = hmac.new(_bytes(secret), b"%d." % timestamp, hashlib.sha256)
    mac.update(_bytes(raw_body))
    return "t=%d,v1=%s" % (timestamp, mac.hexdigest())


def _parse(header):
    if not isinstance(header, str):
        return None
    timestamp, signatures = None, []
    for part in header.split(","):
        key, eq, value = part.strip().partition("=")
        if not eq:
            continue
        if key == "t" and value.isascii() and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        if key == "v1" and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
            signatures.append(value)
    if timestamp is None or not signatures:
        return None
    return timestamp, signatures


def verify_signature(secret, header, raw_body, tolerance_seconds=DEFAULT_TOLERANCE_SECONDS, now=None):
    """Whether ``header`` (the ``Warren-Signature`` request header) signs ``raw_body`` (the
    request's bytes as received, before any JSON parsing) with ``secret``, and was made within
    ``tolerance_seconds`` of now. ``secret`` may be a list, to accept an old and a new one while
    rotating. Comparisons are constant-time."""
    parsed = _parse(header)
    if parsed is None:
        return False
    timestamp, signatures = parsed
    current = int(time.time()) if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        return False
    secrets = secret if isinstance(secret, (list, tuple)) else [secret]
    body = _bytes(raw_body)
    valid = False
    for key in secrets:
        if not key:
            continue
        expected = sign(key, timestamp, body).split("v1=", 1)[1]
        for candidate in signatures:
            # No early exit: every candidate is compared, in constant time each.
            if hmac.compare_digest(expected, candidate):
                valid = True
    return valid


def _json(status, body, headers=None):
    all_headers = {"Content-Type": "application/json"}
    all_headers.update(headers or {})
    return status, all_headers, json.dumps(body).encode("utf-8")


def _is_reply(value):
    return isinstance(value, dict) and "output" in value and set(value) <= _REPLY_KEYS


def _reply(value):
    reply = value if _is_reply(value) else {"output": value}
    body = {"output": reply.get("output")}
    for key in ("stage", "halt"):
        if reply.get(key) is not None:
            body[key] = str(reply[key])
    if reply.get("wait_seconds") is not None:
        body["wait_seconds"] = max(0, math.ceil(float(reply["wait_seconds"])))
    if reply.get("emit") is not None:
        body["emit"] = [{"event": e["event"], "payload": e.get("payload", {})} for e in reply["emit"]]
    if reply.get("logs") is not None:
        body["logs"] = [str(line) for line in reply["logs"]]
    return _json(200, body)


def _error(error):
    code = getattr(error, "code", None)
    code = code if isinstance(code, str) and code else "handler_error"
    retryable = getattr(error, "retryable", True)
    retryable = retryable if isinstance(retryable, bool) else True
    message = getattr(error, "message", None)
    message = message if isinstance(message, str) else str(error)
    headers = {}
    after = getattr(error, "retry_after_seconds", None)
    if retryable and isinstance(after, (int, float)) and after >= 0:
        headers["Retry-After"] = str(math.ceil(after))
    body = {"error": {"code": code, "message": message, "retryable": retryable}}
    logs = getattr(error, "logs", None)
    if isinstance(logs, (list, tuple)):
        body["logs"] = [str(line) for line in logs]
    return _json(500 if retryable else 422, body, headers)


def respond(handler, request):
    """Runs ``handler(request)`` (``request`` is the parsed step request: ``run``, ``step``,
    ``input``, ``outputs``) and gives the answer ``(status, headers, body bytes)``. A plain
    return value is the step's output; a dict with an ``output`` key and only the keys
    ``output``, ``stage``, ``halt``, ``wait_seconds``, ``emit``, ``logs`` is a reply (to return such a dict
    as an output, return ``{"output": it}``). An exception becomes an error answer; this never
    raises."""
    try:
        return _reply(handler(request))
    except Exception as error:  # noqa: BLE001 - every failure becomes an answer
        return _error(error)


def _refuse(status, code, message):
    return _json(status, {"error": {"code": code, "message": message, "retryable": False}})


def _secret(secret):
    secret = os.environ.get("WARREN_STEP_SECRET") if secret is None else secret
    if not secret or (isinstance(secret, (list, tuple)) and not any(secret)):
        raise ValueError("warren_step: no secret (pass secret= or set WARREN_STEP_SECRET) to verify requests with")
    return secret


def make_handler(routes, secret=None, tolerance_seconds=DEFAULT_TOLERANCE_SECONDS, max_body_bytes=DEFAULT_MAX_BODY_BYTES):
    """A ``BaseHTTPRequestHandler`` class serving Warren step requests. ``routes`` is a handler
    (every path) or a dict of handlers by URL path; an unknown path answers 404 (the step fails
    for good). Requests whose signature does not verify with ``secret`` (default: the
    ``WARREN_STEP_SECRET`` environment variable) are refused with 401."""
    secret = _secret(secret)

    class StepRequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, answer):
            status, headers, body = answer
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _not_post(self):
            self.close_connection = True
            self._answer(_refuse(405, "method_not_allowed", "Warren step endpoints take POST, not %s" % self.command))

        do_GET = do_PUT = do_DELETE = do_PATCH = _not_post

        def do_POST(self):  # noqa: N802 - the name http.server calls
            path = urlsplit(self.path).path
            handler = routes if callable(routes) else routes.get(path)
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if length < 0 or length > max_body_bytes:
                self.close_connection = True
                return self._answer(_refuse(413, "request_too_large", "request body over %d bytes" % max_body_bytes))
            raw = self.rfile.read(length)
            if handler is None:
                return self._answer(_refuse(404, "not_found", "no step is served at %s" % path))
            header = self.headers.get("Warren-Signature")
            if not verify_signature(secret, header, raw, tolerance_seconds):
                return self._answer(_refuse(
                    401, "invalid_signature",
                    "Warren-Signature is missing, does not match the secret, or is older than the tolerance"))
            try:
                request = json.loads(raw)
            except ValueError as error:
                return self._answer(_refuse(400, "invalid_request", "the body is not JSON: %s" % error))
            return self._answer(respond(handler, request))

        def log_message(self, format, *args):  # noqa: A002 - http.server's signature
            pass

    return StepRequestHandler


def serve(routes, host="127.0.0.1", port=8080, secret=None, **options):
    """Serves ``routes`` (see ``make_handler``) until interrupted."""
    server = ThreadingHTTPServer((host, port), make_handler(routes, secret, **options))
    try:
        server.serve_forever()
    finally:
        server.server_close()


# ---- Publishing (docs/protocol.md) ----


def publish_properties(message_id=None, tenant=None, idempotency_key=None, priority=None, headers=None, now=None):
    """The properties of one Warren event, as keyword arguments for ``pika.BasicProperties``
    (publish them with ``mandatory=True`` on a channel with ``confirm_delivery()``): JSON,
    persistent, a message id (a fresh UUID unless given) and the Warren headers asked for.

    ``priority`` (``"high"``, ``"normal"`` or ``"low"``) picks the lane of each task with priority
    lanes (docs/priorities.md). The broker reads any other value as normal, so it raises
    ``ValueError`` here, where the typo is made.
    """
    import datetime
    import uuid

    now = now or datetime.datetime.now(datetime.timezone.utc)
    published_at = now.astimezone(datetime.timezone.utc).isoformat(timespec="milliseconds")
    all_headers = dict(headers or {})
    all_headers["warren-published-at"] = published_at.replace("+00:00", "Z")
    if tenant is not None:
        all_headers["warren-tenant"] = str(tenant)
    if idempotency_key is not None:
        all_headers["warren-idempotency-key"] = str(idempotency_key)
    if priority is not None:
        if priority not in PRIORITIES:
            raise ValueError("unknown priority %r (expected high, normal or low)" % (priority,))
        if priority != "normal":
            all_headers["warren-priority"] = priority
    return {
        "content_type": "application/json",
        "delivery_mode": 2,
        "message_id": message_id or str(uuid.uuid4()),
        "headers": all_headers,
    }
