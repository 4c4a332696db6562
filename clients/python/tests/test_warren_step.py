"""python3 -m unittest discover -s clients/python/tests -t clients/python"""

import json
import os
import sys
import threading
import time
import unittest
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer
from unittest import mock

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import warren_step  # noqa: E402
from warren_step import StepError, make_handler, respond, sign, verify_signature  # noqa: E402

# The worked example of docs/steps.md (and of Warren's own signer's tests).
SECRET = "whsec_test_secret"
T = 1767225600
BODY = (
    '{"run":{"id":"0190f5c2-7d1a-7cc0-9d1e-2a6f0e4b8a11","task":"video.process","event":"video.process",'
    '"attempt":1,"message_id":"m-1","tenant":null},"step":"validate","input":{"url":"https://example.com/a.mp4"},'
    '"outputs":{}}'
)
EXPECTED = "27f4ac158c98705621e398a8c139d2b35be7483b90fda7bc4024b680d9bafe13"
HEADER = "t=%d,v1=%s" % (T, EXPECTED)


def body_of(answer):
    return json.loads(answer[2])


class Signatures(unittest.TestCase):
    def test_the_documented_example_signs_to_the_documented_hex(self):
        self.assertEqual(sign(SECRET, T, BODY), HEADER)

    def test_a_signature_made_with_the_secret_verifies_from_text_or_bytes(self):
        self.assertTrue(verify_signature(SECRET, HEADER, BODY, now=T))
        self.assertTrue(verify_signature(SECRET.encode(), HEADER, BODY.encode(), now=T + 10))

    def test_another_secret_body_or_signature_does_not_verify(self):
        self.assertFalse(verify_signature("other", HEADER, BODY, now=T))
        self.assertFalse(verify_signature(SECRET, HEADER, BODY.replace("a.mp4", "b.mp4"), now=T))
        self.assertFalse(verify_signature(SECRET, "t=%d,v1=%s" % (T, "0" * 64), BODY, now=T))
        self.assertFalse(verify_signature(SECRET, "t=%d,v1=%s" % (T + 1, EXPECTED), BODY, now=T))

    def test_a_stale_or_future_timestamp_is_refused_by_the_tolerance_given(self):
        self.assertFalse(verify_signature(SECRET, HEADER, BODY, now=T + 301))
        self.assertFalse(verify_signature(SECRET, HEADER, BODY, now=T - 301))
        self.assertTrue(verify_signature(SECRET, HEADER, BODY, tolerance_seconds=600, now=T + 301))

    def test_a_missing_or_malformed_header_is_refused_never_raised_on(self):
        for header in (None, "", "garbage", "t=%d" % T, "v1=" + EXPECTED, "t=x,v1=" + EXPECTED, "t=%d,v1=zz" % T):
            self.assertFalse(verify_signature(SECRET, header, BODY, now=T), header)

    def test_while_rotating_either_of_two_secrets_verifies(self):
        self.assertTrue(verify_signature(["new-secret", SECRET], HEADER, BODY, now=T))
        self.assertFalse(verify_signature(["new-secret", ""], HEADER, BODY, now=T))


class Answers(unittest.TestCase):
    def test_a_returned_value_is_the_output(self):
        answer = respond(lambda request: {"frames": 3}, {})
        self.assertEqual(answer[0], 200)
        self.assertEqual(body_of(answer), {"output": {"frames": 3}})
        self.assertEqual(body_of(respond(lambda request: None, {})), {"output": None})

    def test_a_returned_reply_sets_the_stage_a_halt_a_wait_and_events(self):
        reply = {
            "output": {"ok": True},
            "stage": "VALIDATED",
            "halt": "NEEDS_USER_INPUT",
            "wait_seconds": 2.5,
            "emit": [{"event": "video.validated", "payload": {"id": 1}}],
        }
        self.assertEqual(
            body_of(respond(lambda request: reply, {})),
            dict(reply, wait_seconds=3),
        )

    def test_a_reply_or_a_step_error_may_carry_lines_for_the_runs_log(self):
        answer = respond(lambda request: {"output": 1, "logs": ["fetched", 42]}, {})
        self.assertEqual(body_of(answer), {"output": 1, "logs": ["fetched", "42"]})

        def failing(request):
            raise StepError("bad_clip", "no audio", retryable=False, logs=["probed"])

        self.assertEqual(
            body_of(respond(failing, {})),
            {"error": {"code": "bad_clip", "message": "no audio", "retryable": False}, "logs": ["probed"]},
        )

    def test_an_output_that_looks_like_a_reply_is_returned_wrapped_in_output(self):
        answer = respond(lambda request: {"output": {"output": 1, "stage": "x"}}, {})
        self.assertEqual(body_of(answer), {"output": {"output": 1, "stage": "x"}})
        plain = respond(lambda request: {"stage": "draft", "title": "t"}, {})
        self.assertEqual(body_of(plain), {"output": {"stage": "draft", "title": "t"}})

    def test_a_raised_step_error_answers_its_code_and_retryability(self):
        def fatal(request):
            raise StepError("invalid_input", "no url", retryable=False)

        answer = respond(fatal, {})
        self.assertEqual(answer[0], 422)
        self.assertEqual(body_of(answer), {"error": {"code": "invalid_input", "message": "no url", "retryable": False}})

        def busy(request):
            raise StepError("busy", "try later", retry_after_seconds=2)

        answer = respond(busy, {})
        self.assertEqual(answer[0], 500)
        self.assertEqual(answer[1]["Retry-After"], "2")
        self.assertTrue(body_of(answer)["error"]["retryable"])

    def test_any_other_exception_is_retryable(self):
        def bug(request):
            raise KeyError("url")

        self.assertEqual(
            body_of(respond(bug, {})),
            {"error": {"code": "handler_error", "message": "'url'", "retryable": True}},
        )

    def test_a_server_without_a_secret_refuses_to_start(self):
        with mock.patch.dict(os.environ, {}, clear=True):
            with self.assertRaisesRegex(ValueError, "no secret"):
                make_handler(lambda request: None)


class Server(unittest.TestCase):
    def setUp(self):
        self.calls = []

        def validate(request):
            self.calls.append(request)
            return {"output": {"step": request["step"]}, "stage": "VALIDATED"}

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler({"/steps/validate": validate}, secret=SECRET))
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.base = "http://127.0.0.1:%d" % self.server.server_address[1]

    def tearDown(self):
        self.server.shutdown()
        self.server.server_close()

    def post(self, path, body, secret=SECRET, signed=True):
        headers = {"Content-Type": "application/json"}
        if signed:
            headers["Warren-Signature"] = sign(secret, int(time.time()), body)
        request = urllib.request.Request(self.base + path, data=body.encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def test_a_signed_request_gets_the_handlers_reply_routed_by_path(self):
        self.assertEqual(
            self.post("/steps/validate", BODY),
            (200, {"output": {"step": "validate"}, "stage": "VALIDATED"}),
        )
        status, body = self.post("/steps/other", BODY)
        self.assertEqual((status, body["error"]["retryable"]), (404, False))

    def test_an_unsigned_or_wrongly_signed_request_is_refused_with_401_not_retryable(self):
        status, body = self.post("/steps/validate", BODY, signed=False)
        self.assertEqual((status, body["error"]["code"]), (401, "invalid_signature"))
        status, body = self.post("/steps/validate", BODY, secret="not-the-secret")
        self.assertEqual((status, body["error"]["retryable"]), (401, False))
        self.assertEqual(self.calls, [])

    def test_a_body_that_is_not_json_is_refused(self):
        status, body = self.post("/steps/validate", "not json")
        self.assertEqual((status, body["error"]["code"]), (400, "invalid_request"))


if __name__ == "__main__":
    unittest.main()


class PublishPropertiesTest(unittest.TestCase):
    def test_high_and_low_work_is_marked_and_normal_work_is_not(self):
        import datetime

        now = datetime.datetime(2026, 11, 23, 10, 0, 0, 250000, tzinfo=datetime.timezone.utc)
        high = warren_step.publish_properties(message_id="m-1", tenant="acme", priority="high", now=now)
        self.assertEqual(
            high,
            {
                "content_type": "application/json",
                "delivery_mode": 2,
                "message_id": "m-1",
                "headers": {
                    "warren-published-at": "2026-11-23T10:00:00.250Z",
                    "warren-tenant": "acme",
                    "warren-priority": "high",
                },
            },
        )
        self.assertEqual(warren_step.publish_properties(priority="low")["headers"]["warren-priority"], "low")
        self.assertNotIn("warren-priority", warren_step.publish_properties(priority="normal")["headers"])
        self.assertNotIn("warren-priority", warren_step.publish_properties()["headers"])
        self.assertEqual(len(warren_step.publish_properties()["message_id"]), 36)

    def test_a_priority_the_broker_would_read_as_normal_is_refused(self):
        for wrong in ("HIGH", "urgent", 1):
            with self.assertRaisesRegex(ValueError, "expected high, normal or low"):
                warren_step.publish_properties(priority=wrong)
