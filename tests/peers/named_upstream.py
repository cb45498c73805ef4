#!/usr/bin/env python3
"""A tiny upstream for Myelin's routing tests: a separate process that answers every request
with its own name, so a test can see which server a request reached.

    named_upstream.py --name NAME --port-file FILE --log FILE [--down-file FILE]

- binds 127.0.0.1 on a free port and writes the port to --port-file once it listens;
- GET /health answers 200, or 503 while --down-file exists;
- a target containing /_test/close: reads the request, then closes the connection without an answer;
- anything else: 200 {"server": NAME, "method": ..., "target": <raw request-target>, "body_len": n};
- every request is appended to --log as "METHOD TARGET BODY_LEN", flushed at once.
Stops on SIGTERM/SIGKILL; nothing else stops it, so the harness kills it.
"""
import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--down-file")
    args = ap.parse_args()
    log = open(args.log, "a", buffering=1)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def read_body(self):
            n = 0
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return n
                    n += len(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return len(self.rfile.read(length)) if length else 0

        def handle_any(self):
            body_len = self.read_body()
            log.write(f"{self.command} {self.path} {body_len}\n")
            if "/_test/close" in self.path:
                self.close_connection = True
                return
            if self.path == "/health":
                down = args.down_file and os.path.exists(args.down_file)
                self.answer(503 if down else 200, b"DOWN" if down else b"OK", "text/plain")
                return
            doc = {"server": args.name, "method": self.command, "target": self.path,
                   "body_len": body_len}
            self.answer(200, json.dumps(doc).encode(), "application/json")

        def answer(self, status, body, ctype):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_HEAD = do_PATCH = handle_any

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
