// A tool's own OAuth 2.0 authorization server for guard's tests, on the real `oidc-provider`:
// client credentials (RFC 6749 §4.4), resource indicators (RFC 8707), introspection (RFC 7662),
// revocation (RFC 7009), and token exchange (RFC 8693) registered with registerGrantType.
//
//   PORT=… node tool_as.mjs config.json
//   config: {issuer, clients: [...], resources: {"<indicator>": {scope, ttl_s}},
//            subject: {issuer, jwks_uri}}   // whose subject tokens token exchange accepts (guard's)
//
// GET /test/issued lists the access tokens issued (grant, client, scope, resource, txn) so the tests
// can count token requests; it says nothing a test could not read from introspection.
import { readFileSync } from 'node:fs';
import { createRemoteJWKSet, jwtVerify } from 'jose';
import Provider, { errors } from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const ACCESS_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const issued = [];
const exchanged = new WeakMap(); // token -> what its subject token said (its extra claims)

function resourceServer(indicator) {
  const rs = config.resources?.[indicator];
  if (!rs) throw new errors.InvalidTarget(`unknown resource ${indicator}`);
  return { scope: rs.scope, audience: indicator, accessTokenFormat: 'opaque', accessTokenTTL: rs.ttl_s ?? 600 };
}

const provider = new Provider(config.issuer, {
  clients: config.clients,
  clientAuthMethods: ['private_key_jwt', 'client_secret_basic', 'client_secret_post'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx, client, oneOf) => oneOf,
      getResourceServerInfo: async (ctx, indicator) => resourceServer(indicator),
      useGrantedResource: () => true,
    },
  },
  extraTokenClaims: async (ctx, token) => exchanged.get(token),
  enabledJWA: { clientAuthSigningAlgValues: ['EdDSA', 'Ed25519', 'ES256', 'RS256'] },
  // Everything in the tests runs on loopback, which the provider's SSRF guard refuses (its
  // dispatcher): guard's jwks_uri is fetched without it. A production server keeps the guard.
  fetch: (url, options) => {
    const { dispatcher, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
});
provider.proxy = false;

const subjectKeys = config.subject ? createRemoteJWKSet(new URL(config.subject.jwks_uri)) : null;

// RFC 8693: a guard-signed subject token {iss, sub: agent, txn: task, scope, requested_by} for an
// access token for `audience` (or `resource`), with the scopes asked that the resource allows.
provider.registerGrantType(EXCHANGE, async (ctx) => {
  const { params, client } = ctx.oidc;
  if (!subjectKeys) throw new errors.UnsupportedGrantType('token exchange is not configured');
  if (params.subject_token_type !== JWT_TYPE) throw new errors.InvalidRequest('subject_token_type must be jwt');
  let claims;
  try {
    ({ payload: claims } = await jwtVerify(params.subject_token, subjectKeys, {
      issuer: config.subject.issuer, audience: ctx.oidc.urlFor('token'), maxTokenAge: '5m',
    }));
  } catch (err) {
    throw new errors.InvalidGrant(`subject_token rejected: ${err.code || err.message}`);
  }
  if (!claims.sub || !claims.txn) throw new errors.InvalidGrant('subject_token names no agent or task');
  const indicator = params.audience || params.resource;
  const info = resourceServer(indicator);
  const allowed = new Set(info.scope.split(' '));
  const scope = (params.scope || '').split(' ').filter((s) => allowed.has(s)).join(' ') || undefined;
  const token = new provider.ClientCredentials({ client, scope });
  token.resourceServer = new provider.ResourceServer(indicator, info);
  // who acts for whom, in this server's own words (shown by introspection)
  exchanged.set(token, { sub: claims.sub, txn: claims.txn, requested_by: claims.requested_by, act: { sub: client.clientId },
    subject_scope: claims.scope });
  const value = await token.save();
  issued.push({ grant: EXCHANGE, client: client.clientId, scope, resource: indicator, txn: claims.txn });
  ctx.body = {
    access_token: value, issued_token_type: ACCESS_TYPE, token_type: 'Bearer', expires_in: token.expiration, scope,
  };
}, ['subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'resource', 'scope', 'actor_token',
  'actor_token_type'], ['resource', 'audience']);

provider.on('grant.success', (ctx) => {
  const { params, client } = ctx.oidc;
  if (params.grant_type === 'client_credentials') {
    issued.push({ grant: 'client_credentials', client: client.clientId, scope: ctx.body?.scope, resource: params.resource });
  }
});

provider.on('grant.error', (ctx, err) => console.log(`grant error: ${err.error}: ${err.error_description} (${err.error_detail ?? ""}: ${err.cause?.message ?? ""} ${err.cause?.cause?.message ?? ""})`));

provider.use(async (ctx, next) => {
  if (ctx.path === '/test/issued' && ctx.method === 'GET') {
    ctx.body = issued;
    return;
  }
  await next();
});

provider.listen(Number(process.env.PORT), '127.0.0.1', () => {
  console.log(`tool authorization server listening on ${config.issuer}`);
});
