"""guard as the OAuth authorization server of `/mcp/{tool}` (MCP authorization), and people's sign-in.

    metadata   RFC 9728 protected resource metadata, RFC 8414 server metadata, the 401 challenge
    clients    who a client is: Client ID Metadata Documents (fetched with SSRF limits) and RFC 7591
    grants     authorization code + PKCE, the consent that creates the task, tokens, refresh, revocation
    sessions   people's sign-in sessions (cookie, CSRF token)
    sso        OpenID Connect relying party of the organisation's IdP
    pages      the HTML of the sign-in, consent and "my delegations" pages (every value escaped)
"""
