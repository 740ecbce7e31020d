#!/usr/bin/env python3
"""Signs a request with botocore's SigV4Auth: an independent signer for the
verifier tests.

Input (argv[1]) is JSON: {"method", "url", "params" (GET query or POST form),
"access_key_id", "secret_access_key", "token" (optional), "region", "service"}.
Prints the request as it would go on the wire: {"method", "path", "query",
"headers": [[name, value], ...], "body"}.
"""
import json
import sys
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def main(spec):
    creds = Credentials(spec["access_key_id"], spec["secret_access_key"], spec.get("token"))
    if spec["method"] == "GET":
        request = AWSRequest(method="GET", url=spec["url"], params=spec["params"])
    else:
        request = AWSRequest(
            method="POST", url=spec["url"], data=spec["params"],
            headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    auth = SigV4Auth(creds, spec["service"], spec["region"])
    auth.add_auth(request)
    # The HTTP client adds Host; botocore signed the value it will send.
    host = auth.headers_to_sign(request)["host"]
    prepared = request.prepare()
    url = urlsplit(prepared.url)
    headers = [[k, v] for k, v in prepared.headers.items()]
    if not any(k.lower() == "host" for k, _ in headers):
        headers.append(["Host", host])
    body = prepared.body or b""
    if isinstance(body, bytes):
        body = body.decode()
    json.dump({
        "method": prepared.method,
        "path": url.path or "/",
        "query": url.query,
        "headers": headers,
        "body": body,
    }, sys.stdout)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
