"""A cloud metadata server for tests, on 127.0.0.1: EC2's IMDSv2 spot notice and GCE's
preempted flag, as each cloud answers them. There is a notice once the file given as
--notice exists; for EC2 it holds the interruption time (ISO 8601, UTC).

    python -m tests.fake_metadata --port PORT --notice FILE
"""
from __future__ import annotations

import argparse
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "fake-imds-token"


def handler(notice: str):
    class Metadata(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                return self._answer(200, TOKEN)
            return self._answer(400, "")

        def do_GET(self) -> None:
            if self.path == "/latest/meta-data/spot/instance-action":
                if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
                    return self._answer(401, "")
                if not os.path.exists(notice):
                    return self._answer(404, "")
                with open(notice) as handle:
                    return self._answer(200, '{"action": "terminate", "time": "%s"}' % handle.read().strip())
            if self.path == "/computeMetadata/v1/instance/preempted":
                if self.headers.get("Metadata-Flavor") != "Google":
                    return self._answer(403, "")
                return self._answer(200, "TRUE" if os.path.exists(notice) else "FALSE")
            return self._answer(404, "")

        def _answer(self, code: int, body: str) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args) -> None:
            pass

    return Metadata


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--notice", required=True)
    args = parser.parse_args()
    ThreadingHTTPServer(("127.0.0.1", args.port), handler(args.notice)).serve_forever()


if __name__ == "__main__":
    main()
