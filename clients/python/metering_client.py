"""Report usage to the metering-sidecar from Python, with the standard library only.

    from metering_client import MeteringClient
    client = MeteringClient()                       # METERING_SOCKET, or /run/metering/metering.sock
    client.report("requests", 3, tags={"tenant": "acme"})
    client.report_batch([{"dimension": "requests", "quantity": 3}, {"dimension": "gb", "quantity": 1}])

Every record gets an idempotency key (a UUID) before the first attempt unless it has one, and every retry
resends the same keys: a report whose answer was lost (a reset, a timeout, a sidecar restart) is counted once
however often it is sent. Retried: a socket that is not there or refuses, a connection lost before the answer,
a timeout, 429 TooManyRequests and 503 (NotEntitled yet, StorageUnavailable), with backoff and full jitter until
`deadline_s`. Any other answer but 202 raises MeteringError with the sidecar's error code: resending it would
be refused the same way. See docs/api.md of metering-sidecar.

Run as a command: python3 metering_client.py DIMENSION QUANTITY [--tag k=v]... [--id KEY]
"""

import http.client
import json
import os
import random
import socket
import sys
import time
import uuid

__all__ = ["MeteringClient", "MeteringError"]

DEFAULT_SOCKET = "/run/metering/metering.sock"
RETRYABLE_STATUSES = (429, 503)


class MeteringError(Exception):
    """The sidecar refused the report (`status`, `code`), or it could not be delivered before the deadline."""

    def __init__(self, message, status=None, code=None):
        super().__init__(message)
        self.status = status
        self.code = code


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class MeteringClient:
    """A client of the sidecar's app API over its unix socket (or loopback TCP with `host` and `port`)."""

    def __init__(self, socket_path=None, host=None, port=None, timeout_s=10.0, deadline_s=60.0):
        if host is None:
            self._socket = socket_path or os.environ.get("METERING_SOCKET") or DEFAULT_SOCKET
        else:
            self._socket = None
        self._host = host
        self._port = port
        self._timeout_s = timeout_s
        self._deadline_s = deadline_s

    def report(self, dimension, quantity, tags=None, id=None):
        """Reports one record; returns the sidecar's answer ({"accepted": n, "duplicates": m})."""
        record = {"dimension": dimension, "quantity": quantity}
        if tags:
            record["tags"] = dict(tags)
        record["id"] = id if id is not None else str(uuid.uuid4())
        return self._send(record)

    def report_batch(self, records):
        """Reports up to 10,000 records, all or nothing; records without an `id` are given one first."""
        keyed = []
        for r in records:
            r = dict(r)
            r.setdefault("id", str(uuid.uuid4()))
            keyed.append(r)
        return self._send({"records": keyed})

    def _send(self, payload):
        # Serialised once: every attempt sends the same bytes, and so the same idempotency keys.
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        give_up_at = time.monotonic() + self._deadline_s
        attempt = 0
        while True:
            attempt += 1
            try:
                status, answer, retry_after = self._post(body)
            except (OSError, http.client.HTTPException) as err:
                problem = "{}: {}".format(type(err).__name__, err)
                status, answer, retry_after = None, None, None
            else:
                if status == 202:
                    return answer
                error = (answer or {}).get("error", {}) if isinstance(answer, dict) else {}
                problem = "{} {}: {}".format(status, error.get("code"), error.get("message"))
                if status not in RETRYABLE_STATUSES:
                    raise MeteringError(problem, status=status, code=error.get("code"))
            delay = retry_after if retry_after is not None else random.uniform(0, min(5.0, 0.25 * 2 ** attempt))
            if time.monotonic() + delay > give_up_at:
                raise MeteringError(
                    "not delivered after {} attempts ({}); resend with the same ids".format(attempt, problem),
                    status=status,
                )
            time.sleep(delay)

    def _post(self, body):
        if self._socket is not None:
            conn = _UnixConnection(self._socket, self._timeout_s)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)
        try:
            conn.request("POST", "/v1/usage", body=body, headers={"Content-Type": "application/json"})
            res = conn.getresponse()
            text = res.read()
            retry_after = res.getheader("Retry-After")
            try:
                answer = json.loads(text) if text else None
            except ValueError:
                answer = None
            return res.status, answer, float(retry_after) if retry_after and retry_after.isdigit() else None
        finally:
            conn.close()


def _main(argv):
    import argparse

    parser = argparse.ArgumentParser(description="Report usage to the metering-sidecar.")
    parser.add_argument("dimension")
    parser.add_argument("quantity", type=int)
    parser.add_argument("--tag", action="append", default=[], help="KEY=VALUE, up to 5")
    parser.add_argument("--id", help="idempotency key (a new UUID by default)")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds to keep retrying")
    args = parser.parse_args(argv)
    tags = {}
    for tag in args.tag:
        key, sep, value = tag.partition("=")
        if not sep or not key:
            parser.error("--tag takes KEY=VALUE, got {!r}".format(tag))
        tags[key] = value
    try:
        answer = MeteringClient(deadline_s=args.deadline).report(args.dimension, args.quantity, tags, args.id)
    except MeteringError as err:
        print("metering_client: {}".format(err), file=sys.stderr)
        return 1
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
