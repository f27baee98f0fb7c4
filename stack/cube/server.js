'use strict';
// The real Cube the proxy runs and is tested against: CubejsServerCore embedded in
// an express app bound to loopback, one tenant (schema, connection pool, result
// cache) per GitLab project, keyed by the JWT's appId.
const express = require('express');
const { CubejsServerCore } = require('@cubejs-backend/server-core');
const { PostgresDriver } = require('@cubejs-backend/postgres-driver');

const APP_ID = /^gitlab_project_[0-9]+$/;
const host = process.env.CUBE_HOST || '127.0.0.1';
const port = Number(process.env.CUBE_PORT || 4000);

function tenantOf(securityContext) {
  const appId = securityContext && securityContext.appId;
  if (typeof appId !== 'string' || !APP_ID.test(appId)) {
    throw new Error('appId must be gitlab_project_<digits>');
  }
  return appId;
}

const core = new CubejsServerCore({
  apiSecret: process.env.CUBEJS_API_SECRET,
  schemaPath: process.env.CUBE_MODEL_PATH || 'model',
  dbType: 'postgres',
  // Both must key on the tenant: without contextToOrchestratorId Cube shares one
  // pool and one result cache between tenants.
  contextToAppId: ({ securityContext }) => `CUBE_APP_${tenantOf(securityContext)}`,
  contextToOrchestratorId: ({ securityContext }) => `CUBE_ORCH_${tenantOf(securityContext)}`,
  driverFactory: ({ securityContext }) => new PostgresDriver({
    host: process.env.CUBE_PG_HOST || '127.0.0.1',
    port: Number(process.env.CUBE_PG_PORT || 5432),
    user: process.env.CUBE_PG_USER || 'postgres',
    password: process.env.CUBE_PG_PASSWORD || 'postgres',
    database: process.env.CUBE_PG_DATABASE || 'analytics',
    options: `-c search_path=${tenantOf(securityContext)}`,
    max: 4,
  }),
  scheduledRefreshTimer: false,
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
