"""Schemathesis hooks for scripts/contract.sh.

One thing differs between the local stack and AWS: `cargo lambda watch` turns each HTTP request
into an API Gateway event itself, and it cannot put bytes that are not text into that event: a
header value that is not ASCII, or a body that is not UTF-8, is answered 500 by watch, with its
own problem document, before any function runs. API Gateway instead hands the function such a
body base64-encoded and such a header as text, and the functions answer those events 400/401
(tests: `bodies_api_gateway_hands_over_base64_...`, `idempotency_keys_that_are_not_ascii_...`,
`a_webhook_body_that_is_not_utf8_...`).

So `not_a_server_error` and `content_type_conformance` are replaced by the two checks below,
which are the built-in ones except for exactly that case: a request watch cannot represent,
answered by watch's own 500. Every other 5xx and every other content type still fails.
"""
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance

WATCH_PROBLEM = b'"type":"https://httpstatuses.com/500"'


def _not_text(value) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        value = value.encode("latin-1", errors="replace")
    try:
        value.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def _watch_refused_it(response) -> bool:
    request = response.request
    headers_not_ascii = any(
        not str(v).isascii() for v in request.headers.values()
    )
    body = request.body
    if isinstance(body, str):
        body = body.encode("utf-8", errors="surrogateescape")
    return (
        response.status_code == 500
        and WATCH_PROBLEM in (response.content or b"")
        and (headers_not_ascii or _not_text(body))
    )


@schemathesis.check
def not_a_server_error_beyond_watch(ctx, response, case):
    if _watch_refused_it(response):
        return True
    return not_a_server_error(ctx, response, case)


@schemathesis.check
def content_type_conformance_beyond_watch(ctx, response, case):
    if _watch_refused_it(response):
        return True
    return content_type_conformance(ctx, response, case)
