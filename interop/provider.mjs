// The interop suite's OpenID provider: oidc-provider with one confidential client, PKCE required, refresh-token
// rotation, short access tokens, revocation, introspection, RP-initiated and back-channel logout, and dev
// interactions so a sign-in can be scripted. Usage: node provider.mjs PORT CLIENT_ORIGIN
// GET /__interop/events answers what the provider saw (refresh grants, grant errors, back-channel sends).
import Provider from 'oidc-provider';

const port = Number(process.argv[2] ?? 9410);
const client = process.argv[3] ?? 'http://127.0.0.1:9411';
const issuer = `http://127.0.0.1:${port}`;

const events = { refresh_grants: 0, grant_errors: [], backchannel_ok: 0, backchannel_errors: 0 };

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'conformance',
    client_secret: 'conformance-secret',
    redirect_uris: [`${client}/auth/callback`],
    post_logout_redirect_uris: [`${client}/`],
    backchannel_logout_uri: `${client}/auth/backchannel-logout`,
    backchannel_logout_session_required: true,
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  rotateRefreshToken: true,
  // A web client that may use refresh tokens gets one without a consent prompt for offline_access.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: { AccessToken: 60, IdToken: 3600, RefreshToken: 86400, Session: 86400, Grant: 86400, Interaction: 600 },
  features: {
    devInteractions: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    backchannelLogout: { enabled: true },
  },
  claims: { openid: ['sub', 'sid'], profile: ['name'], email: ['email'] },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, name: id, email: `${id}@example.test` }),
  }),
  cookies: { keys: ['bff-session-interop'] },
  // oidc-provider refuses to call special-use addresses (SSRF protection). The BFF under test is on loopback,
  // so requests to exactly its origin (back-channel logout) go out without that guard; all others keep it.
  fetch: (url, options) => {
    if (String(url).startsWith(`${client}/`)) delete options.dispatcher;
    return globalThis.fetch(url, options);
  },
});

provider.on('grant.success', (ctx) => {
  if (ctx.oidc.params?.grant_type === 'refresh_token') events.refresh_grants += 1;
});
provider.on('grant.error', (ctx, error) => events.grant_errors.push(`${ctx.oidc.params?.grant_type}: ${error.message}`));
provider.on('backchannel.success', () => { events.backchannel_ok += 1; });
provider.on('backchannel.error', (ctx, error) => {
  events.backchannel_errors += 1;
  console.error(`back-channel logout failed: ${error.message} ${error.cause?.code ?? ""} ${error.cause?.message ?? ""}`);
});

provider.use(async (ctx, next) => {
  if (ctx.path === '/__interop/events') {
    ctx.body = events;
    return;
  }
  await next();
});

provider.listen(port, '127.0.0.1', () => console.log(`oidc-provider at ${issuer} for ${client}`));
