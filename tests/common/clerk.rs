//! Clerk-side fixtures for the token-route tests: signing keys, session tokens, a JWKS server.
