"""An upstream that trusts nothing but the gateway's signature: every request must carry an
X-Identity-Assertion that PyJWT verifies against the gateway's JWKS, for this upstream's
audience. 200 with the claims (and the header's kid) when it does, 401 with the reason when not.

    python3 assertion_upstream.py PORT JWKS_URL AUDIENCE ISSUER

This is what the README shows an upstream doing, nearly line for line.
"""
import http.server
import json
import sys

import jwt

port, jwks_url, audience, issuer = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
# Fetches the JWKS once, again for a kid it has not seen (a new instance, a rotated key).
jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300)


def verify(token):
    key = jwks.get_signing_key_from_jwt(token)
    return jwt.decode(token, key, algorithms=["EdDSA"], audience=audience, issuer=issuer,
                      options={"require": ["exp", "iat", "sub", "aud", "iss", "jti"]})


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        token = self.headers.get("x-identity-assertion")
        try:
            if token is None:
                raise ValueError("no X-Identity-Assertion")
            claims = verify(token)
            status, body = 200, {"claims": claims, "kid": jwt.get_unverified_header(token)["kid"],
                                 "assertion": token, "user_id": self.headers.get("x-user-id")}
        except Exception as e:  # every failure is the same answer: not verified
            status, body = 401, {"error": type(e).__name__, "message": str(e), "assertion": token}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Upstream)
print("ready", flush=True)
server.serve_forever()
