'use strict';
// The real Cube the proxy runs and is tested against: CubejsServerCore embedded in
// an express app bound to loopback, with the shipped tenant configuration
// (deploy/cube/cube.js: one model, orchestrator and schema per GitLab project, keyed
// by the JWT's appId) and the connection from Cube's own CUBEJS_DB_* variables.
const http = require('http');
const path = require('path');

// Node 20's global agent closes a socket that has been idle for 5 s; the ClickHouse driver's HTTP client waits
// silently on its socket while a query runs, so any query over 5 s ended in "socket hang up". Cube 0.33's image
// runs Node 16, whose agent keeps no such timeout: the local Cube does the same.
http.globalAgent = new http.Agent();
const express = require('express');
const { CubejsServerCore } = require('@cubejs-backend/server-core');

const tenants = require(process.env.CUBE_CONF || path.join(__dirname, '..', '..', 'deploy', 'kubernetes', 'base', 'cube.js'));
const host = process.env.CUBE_HOST || '127.0.0.1';
const port = Number(process.env.CUBE_PORT || 4000);

// CUBE_CONTINUE_WAIT (whole seconds, at least 1): how long Cube holds a query before it answers Continue wait
// (its own default is 5 s); the tests' stack shortens it, with the slow cube's sleep (slow_seconds.js)
const continueWait = process.env.CUBE_CONTINUE_WAIT ? Number(process.env.CUBE_CONTINUE_WAIT) : undefined;

const core = new CubejsServerCore({
  ...tenants,
  ...(continueWait ? { orchestratorOptions: { continueWaitTimeout: continueWait } } : {}),
  apiSecret: process.env.CUBEJS_API_SECRET,
  schemaPath: process.env.CUBE_MODEL_PATH || 'model',
  telemetry: false,
  // One JSON line per Cube event when CUBE_LOG_QUERIES=true (the tests count 'Load Request'
  // lines to prove coalescing); the security context is reduced to its appId.
  logger: (msg, params) => {
    if (process.env.CUBE_LOG_QUERIES === 'true' || /Error/.test(msg)) {
      const { securityContext, query, ...rest } = params || {};
      const appId = securityContext && securityContext.appId;
      console.log(JSON.stringify({ message: msg, appId, requestId: rest.requestId, error: rest.error }));
    }
  },
});

async function main() {
  const app = express();
  app.use(express.json({ limit: '50mb' }));
  await core.initApp(app);
  const server = app.listen(port, host, () => {
    console.log(JSON.stringify({ message: 'cube listening', host, port }));
  });
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
