"""Who is calling: the guard's keys, their rotation and the tokens it signs, trusted issuers and
their JWKS, principals and roles, and what binds a token to its holder (mTLS SPIFFE IDs, DPoP)."""
