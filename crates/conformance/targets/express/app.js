'use strict';
// express-openid-connect as a Backend-for-Frontend, set up as its README and its examples recommend:
// `auth()` with the authorization code flow and a confidential client, `requiresAuth()` on the API,
// `backchannelLogout`, `idpLogout`, and the documented access-token pattern
// (`if (accessToken.isExpired()) accessToken = await accessToken.refresh()`) before calling the API.
//
// EOC_SESSION picks the session storage:
//   cookie  the default stateless, encrypted cookie session; back-channel logout needs its own store
//   store   a server-side session store (memorystore, as in the library's examples), reused for logout tokens
//
// The conformance harness passes the provider and the upstream in BFF_CONFORMANCE_* variables.

const crypto = require('node:crypto');
const express = require('express');
const { auth, requiresAuth } = require('express-openid-connect');
const MemoryStore = require('memorystore')(auth);

function env(name, fallback) {
  const value = process.env[name] ?? fallback;
  if (value === undefined || value === '') {
    console.error(`express target: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

function seconds(name, fallback) {
  const value = Number(env(name, fallback));
  if (!Number.isInteger(value) || value <= 0) {
    console.error(`express target: ${name} must be a positive number of seconds`);
    process.exit(2);
  }
  return value;
}

const port = Number(env('PORT', '3000'));
const mode = env('EOC_SESSION', 'cookie');
const upstream = env('BFF_CONFORMANCE_UPSTREAM');

const session = {
  rolling: true,
  rollingDuration: seconds('EOC_IDLE_SECONDS', '20'),
  absoluteDuration: seconds('EOC_ABSOLUTE_SECONDS', '60'),
};
let backchannelLogout;
if (mode === 'store') {
  session.store = new MemoryStore({ checkPeriod: 60_000 });
  backchannelLogout = true;
} else if (mode === 'cookie') {
  backchannelLogout = { store: new MemoryStore({ checkPeriod: 60_000 }) };
} else {
  console.error(`express target: EOC_SESSION must be cookie or store, not ${mode}`);
  process.exit(2);
}

const app = express();
app.use(
  auth({
    issuerBaseURL: env('BFF_CONFORMANCE_ISSUER'),
    baseURL: env('EOC_BASE_URL', `http://127.0.0.1:${port}`),
    clientID: env('BFF_CONFORMANCE_CLIENT_ID'),
    clientSecret: env('BFF_CONFORMANCE_CLIENT_SECRET'),
    secret: env('EOC_SECRET', crypto.randomBytes(32).toString('hex')),
    authRequired: false,
    idpLogout: true,
    authorizationParams: {
      response_type: 'code',
      scope: 'openid profile email offline_access',
    },
    session,
    backchannelLogout,
  }),
);

// The front end asks whether it is signed in.
app.get('/session', (req, res) => {
  if (!req.oidc.isAuthenticated()) {
    return res.status(401).json({ error: 'unauthenticated' });
  }
  res.json({ user: req.oidc.user.sub });
});

// The API the front end calls: the access token is attached here, refreshed first when it has expired.
app.all('/api/userinfo', requiresAuth(), async (req, res, next) => {
  try {
    let accessToken = req.oidc.accessToken;
    if (accessToken.isExpired()) {
      accessToken = await accessToken.refresh();
    }
    const answer = await fetch(`${upstream}/userinfo`, {
      headers: { authorization: `${accessToken.token_type} ${accessToken.access_token}` },
    });
    res.status(answer.status).type('application/json').send(await answer.text());
  } catch (err) {
    next(err);
  }
});

app.get('/', (req, res) => res.send(req.oidc.isAuthenticated() ? 'signed in' : 'signed out'));

app.listen(port, '127.0.0.1', () => console.log(`express target (${mode} sessions) on 127.0.0.1:${port}`));
