"""Who is calling: the guard's keys and the tokens it signs, trusted issuers and their JWKS,
principals and roles."""
