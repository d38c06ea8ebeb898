// The organisation's IdP for guard's tests: a real oidc-provider (v9) with test accounts that
// sign in with a password on a minimal login page, authorization code + PKCE only, and a
// `roles` claim (scope `roles`) in the ID token.
//
//   PORT=... node idp.mjs config.json
//   config: {issuer, clients: [{client_id, client_secret?, redirect_uris}],
//            accounts: {"<login>": {password, roles: [...], email?, email_verified? (default true)}}}
import http from 'node:http';
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accounts = config.accounts || {};

const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const provider = new Provider(config.issuer, {
  clients: (config.clients || []).map((c) => ({
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: c.client_secret ? 'client_secret_basic' : 'none',
    ...c,
  })),
  async findAccount(ctx, id) {
    const account = accounts[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: account.email || id, email_verified: account.email_verified ?? true, roles: account.roles || [] };
      },
    };
  },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], roles: ['roles'] },
  scopes: ['openid', 'email', 'roles'],
  conformIdTokenClaims: false,          // the roles go in the ID token, where guard reads them
  pkce: { required: () => true },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: ['guard-test-idp-cookie-key'] },
  async loadExistingGrant(ctx) {        // first-party clients: no consent screen at the IdP
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email roles');
    grant.addOIDCClaims(['email', 'email_verified', 'roles']);
    await grant.save();
    return grant;
  },
});

function loginPage(uid, error) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>Acme sign-in</title></head><body>
<h1>Acme sign-in</h1>${error ? `<p id="error">${escapeHtml(error)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}/login">
<label>Login <input name="login" id="login" autofocus></label>
<label>Password <input name="password" id="password" type="password"></label>
<button type="submit" id="submit">Sign in</button></form></body></html>`;
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  if (req.method === 'GET') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(loginPage(details.uid));
    return;
  }
  const form = await readForm(req);
  const account = accounts[form.get('login')];
  if (!account || account.password !== form.get('password')) {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(loginPage(details.uid, 'wrong login or password'));
    return;
  }
  await provider.interactionFinished(req, res, { login: { accountId: form.get('login') } },
    { mergeWithLastSubmission: false });
}

const callback = provider.callback();
http.createServer((req, res) => {
  if (req.url.startsWith('/interaction/')) {
    interaction(req, res).catch((err) => {
      res.writeHead(400, { 'content-type': 'text/plain' });
      res.end(String(err && err.message));
    });
    return;
  }
  callback(req, res);
}).listen(Number(process.env.PORT), '127.0.0.1', () => {
  console.log(`idp listening on ${config.issuer}`);
});
