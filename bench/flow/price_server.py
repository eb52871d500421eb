"""Local stand-in for the cryptocompare `pricemulti` endpoint (same JSON shape).

    python price_server.py PORT
GET anything -> {"BTC":{"USD":...},"ETH":{"USD":...}} (a small random walk).
"""
import json
import random
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

prices = {"BTC": 91234.5, "ETH": 3000.25}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle + delayed ACK add
    # ~40 ms to every keep-alive request (an artefact of the stand-in, not of the client).
    disable_nagle_algorithm = True

    def do_GET(self):
        for k in prices:
            prices[k] = round(prices[k] * (1 + (random.random() - 0.5) * 0.001), 2)
        body = json.dumps({k: {"USD": v} for k, v in prices.items()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
