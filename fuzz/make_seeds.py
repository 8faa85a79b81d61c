#!/usr/bin/env python3
"""Writes the hand-made seed corpora, fuzz/corpus/<target>/seed-*. Run from fuzz/.

Nothing secret: the tokens carry junk signatures (the targets sign what they need with a key
derived from a fixed seed), the JWKS entries are public keys (RFC 7517 / 7515 examples)."""
import base64
import json
import os


def w(target, name, data):
    d = f"corpus/{target}"
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(f"{d}/seed-{name}", "wb") as f:
        f.write(data)


def b64(b):
    if isinstance(b, str):
        b = b.encode()
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


HDR = '{"alg":"RS256","kid":"ins_2abc","typ":"JWT"}'
PAY = ('{"azp":"https://app.example.com","exp":1700003600,"iat":1700000000,'
       '"iss":"https://clerk.fuzz.invalid","nbf":1700000000,"sid":"sess_2abc","sts":"active",'
       '"sub":"user_2abc","v":2}')
JWT = f"{b64(HDR)}.{b64(PAY)}.{b64(bytes(range(64)))}"
NONE_HDR = '{"alg":"none"}'
HS_HDR = '{"alg":"HS256","typ":"JWT"}'

# bearer: flags byte (bit 0: session_cookie), then \n-separated pieces whose first byte is odd
# for Authorization and even for Cookie.
w("bearer", "bearer", b"\x00A" + f"Bearer {JWT}".encode())
w("bearer", "bearer-odd-case-tabs", b"\x00A" + f" \tbEaReR \t {JWT} ".encode())
w("bearer", "two-tokens", b"\x00ABearer a.b.c d.e.f")
w("bearer", "comma", b"\x00ABearer a.b.c,d.e.f")
w("bearer", "basic", b"\x00ABasic dXNlcjpwYXNz")
w("bearer", "two-headers", b"\x00ABearer a.b.c\nABearer d.e.f")
w("bearer", "cookie", b"\x01Btheme=dark; __session=" + JWT.encode() + b"; other=1")
w("bearer", "cookie-off", b"\x00B__session=x.y.z")
w("bearer", "cookie-and-header", b"\x01B__session=x.y.z\nABearer a.b.c")
w("bearer", "cookie-empty-first", b"\x01B__session=; __session=x.y.z\nB__session=q")
w("bearer", "obs-text", b"\x00ABearer \xff\xfe")

# session_token: flags, clock knob (0x3c: now = 1_700_000_000 - 3600 + 60*60), rest.
w("session_token", "raw-jwt", b"\x00\x3c" + JWT.encode())
w("session_token", "raw-none-alg", b"\x00\x3c" + f"{b64(NONE_HDR)}.{b64(PAY)}.".encode())
w("session_token", "raw-hs256", b"\x00\x3c" + f"{b64(HS_HDR)}.{b64(PAY)}.{b64(b'x' * 32)}".encode())
w("session_token", "raw-two-parts", b"\x00\x3cabc.def")
w("session_token", "raw-four-parts", b"\x00\x3ca.b.c.d")
w("session_token", "payload-good", b"\x01\x3c" + PAY.encode())
w("session_token", "payload-good-pem", b"\x09\x3c" + PAY.encode())
w("session_token", "payload-float-times", b"\x01\x3c" + b'{"azp":"https://app.example.com","exp":1700003600.5,"iat":1.7e9,"iss":"https://clerk.fuzz.invalid","sid":"s","sub":"user_2abc"}')
w("session_token", "payload-expired", b"\x01\xff" + PAY.encode())
w("session_token", "payload-wrong-azp", b"\x01\x3c" + PAY.replace("app.example.com", "evil.example").encode())
w("session_token", "payload-bad-sub", b"\x01\x3c" + PAY.replace("user_2abc", "a/b c").encode())
w("session_token", "payload-huge-exp", b"\x01\x3c" + b'{"azp":"https://app.example.com","exp":1e300,"iss":"https://clerk.fuzz.invalid","sub":"u"}')
w("session_token", "payload-negative-nbf", b"\x01\x3c" + b'{"azp":"https://app.example.com","exp":1700003600,"nbf":-1,"iss":"https://clerk.fuzz.invalid","sub":"u"}')
w("session_token", "payload-no-kid", b"\x11\x3c" + PAY.encode())
w("session_token", "payload-kid-alg-mismatch", b"\x21\x3c" + PAY.encode())
w("session_token", "payload-corrupt-sig", b"\x05\x3c" + PAY.encode())
w("session_token", "header-good", b'\x02\x3c{"alg":"ES256","kid":"fuzz-ec","typ":"JWT"}')
w("session_token", "header-unknown-kid", b'\x02\x3c{"alg":"ES256","kid":"rotated"}')
w("session_token", "header-none", b'\x02\x3c{"alg":"none"}')
w("session_token", "header-dup-alg", b'\x02\x3c{"alg":"ES256","alg":"none"}')
w("session_token", "both", b'\x03\x3c{"alg":"ES256","kid":"fuzz-ec"}\xff' + PAY.encode())
# Clerk's token kinds and session states (issue 15): header index 4 is Clerk's session header.
CLERK_HDR = '{"alg":"ES256","cat":"cl_B7d4PD111AAA","kid":"fuzz-ec","typ":"JWT"}'
w("session_token", "payload-clerk-header", b"\x41\x3c" + PAY.encode())
w("session_token", "payload-pending", b"\x41\x3c" + PAY.replace('"active"', '"pending"').encode())
w("session_token", "payload-pending-pem", b"\x49\x3c" + PAY.replace('"active"', '"pending"').encode())
w("session_token", "payload-no-sid", b"\x41\x3c" + PAY.replace('"sid":"sess_2abc",', "").encode())
w("session_token", "payload-machine", b"\x41\x3c" + PAY.replace("user_2abc", "mch_2abc").encode())
w("session_token", "payload-issuer-slash", b"\x41\x3c" + PAY.replace('invalid"', 'invalid/"').encode())
for name, header in [
    ("header-template", CLERK_HDR.replace("111AAA", "222AAA")),
    ("header-m2m", CLERK_HDR.replace("111AAA", "333AAA")),
    ("header-ignore", CLERK_HDR.replace("B7d4PD111AAA", "I7d4PD111III")),
    ("header-at-jwt", CLERK_HDR.replace('"JWT"', '"at+jwt"')),
    ("header-crit", CLERK_HDR.replace("{", '{"crit":["b64"],"b64":false,', 1)),
]:
    w("session_token", name, b"\x02\x3c" + header.encode())

# jwks: documents, public keys only.
RSA_N = ("sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBig"
         "eC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_Nxs"
         "iIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHp"
         "M2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw")
w("jwks", "clerk-like", json.dumps({"keys": [{"use": "sig", "kty": "RSA", "kid": "ins_2abc", "alg": "RS256", "n": RSA_N, "e": "AQAB"}]}))
w("jwks", "rsa-fuzz-kid", json.dumps({"keys": [{"kty": "RSA", "kid": "fuzz", "n": RSA_N, "e": "AQAB"}]}))
w("jwks", "mixed", json.dumps({"keys": [
    {"kty": "RSA", "kid": "a", "use": "sig", "alg": "RS256", "n": RSA_N, "e": "AQAB"},
    {"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA_N, "e": "AQAB"},
    {"kty": "weird", "kid": "w"},
    {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
    {"kty": "EC", "crv": "P-256", "kid": "ec", "alg": "ES256",
     "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
    {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
    {"kty": "oct", "kid": "hmac", "k": "AAAA"},
]}))
w("jwks", "ec-p384", json.dumps({"keys": [{"kty": "EC", "crv": "P-384", "kid": "fuzz", "x": "AAAA", "y": "AAAA"}]}))
w("jwks", "seq-form", '[[{"kty":"RSA","kid":"fuzz","n":"AQAB","e":"AQAB"}]]')
w("jwks", "empty", '{"keys":[]}')
w("jwks", "html", "<html><body>502 Bad Gateway</body></html>")

# token_body: the same bytes are the body and the path.
for name, data in [
    ("empty", ""), ("ws", " \r\n\t"), ("own", '{"userId":"user_2abc","userName":"Me"}'),
    ("other", '{"userId":"user_admin"}'), ("null", '{"userId":null}'), ("number", '{"userId":7}'),
    ("array", "[]"), ("truncated", '{"userId":"user_2abc"'), ("dup", '{"userId":"user_2abc","userId":"x"}'),
    ("path", "/api/stream/token"), ("path-slash", "/API/Stream/Token/"), ("path-double", "//api//stream///token"),
    ("path-dots", "/api/x/../stream/./token"), ("path-pct", "/api/stream/%74oken"),
    ("path-pct-slash", "/api%2Fstream%2Ftoken"), ("path-tokens", "/api/stream/tokens"),
    ("path-bad-pct", "/api/stream/%zz"), ("path-query", "/api/stream/token?x=1"),
    ("path-deep-dots", "/a/b/c/../../../api/stream/token/../token"),
]:
    w("token_body", name, data)

# client_ip: kind byte (see the target), peer bytes, X-Forwarded-For values split on \n.
w("client_ip", "untrusted-v4", b"\x00" + bytes([203, 0, 113, 7]) + b"10.0.0.1")
w("client_ip", "trusted-one-hop", b"\x03203.0.113.7")
w("client_ip", "trusted-chain", b"\x07198.51.100.1, 203.0.113.7, 10.2.2.2, 192.168.1.1")
w("client_ip", "trusted-two-headers", b"\x0b198.51.100.1\n203.0.113.7:5000, [2001:db8::1]:443")
w("client_ip", "trusted-garbage", b"\x0f203.0.113.7, unknown, 10.0.0.5")
w("client_ip", "trusted-mapped", b"\x13::ffff:203.0.113.9, ::ffff:10.9.9.9")
w("client_ip", "all-trusted", b"\x1710.0.0.1, fd00::2, 2001:db8:1::9")
w("client_ip", "v6-peer", b"\x01" + bytes(16) + b"1.2.3.4")
w("client_ip", "mapped-trusted-peer", b"\x02" + bytes([10, 0, 0, 1]) + b"203.0.113.7")
w("client_ip", "empty-header", b"\x03\n")

# config: the shipped files and a few hand-made ones.
w("config", "proxy", open("../proxy.toml", "rb").read())
w("config", "kubernetes", open("../deploy/kubernetes/proxy.toml", "rb").read())
w("config", "minimal-prod", '''[auth]
issuer = "https://clerk.example.com"
public_key_pem = """-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
-----END PUBLIC KEY-----"""
[stream]
api_secret_file = "/run/secret"
[limits]
trusted_proxies = ["10.0.0.0/8", "fd00::1"]
token_global = { requests = 100, period = "1s", burst = 5 }
[[limits.forward]]
prefix = "/api/upload"
requests = 10
period = "1m"
''')
w("config", "bad-duration", '[upstream]\nresponse_timeout = "0s"\n')
# Regression: `validate` used to panic on a response_timeout this large (Duration * 10).
w("config", "huge-response-timeout", '[upstream]\nresponse_timeout = "2000000000000000000s"\n')
w("config", "unknown-key", '[server]\nlisten = "127.0.0.1:3001"\nbogus = 1\n')

# Found by the first smoke run: a signed token whose unknown `sid` claim is invalid UTF-8 is
# accepted (serde skips unknown fields unvalidated); the target must read it back the same way.
w("session_token", "both-invalid-utf8-sid",
  b'\x03\x3c{"alg":"ES256","kid":"fuzz-ec"}\xff' + PAY.replace("sess_2abc", "\udcff").encode("utf-8", "surrogateescape"))
