// Cube's tenant configuration for product-analytics-proxy: the one file the local stack, the tests, docker
// compose and the Kubernetes manifests all run (mounted as Cube's /cube/conf/cube.js).
//
// GitLab's convention: the JWT the proxy signs carries appId = "gitlab_project_<id>". That appId selects
// - the tenant's compiled data model (contextToAppId),
// - its own query orchestrator: its own connection pool and result cache (contextToOrchestratorId; without it
//   Cube shares one pool and one result cache between tenants),
// - its data: for PostgreSQL the schema "gitlab_project_<id>", as the first and only search_path entry, so the
//   model's tables are unqualified (GitLab's own stack selects a ClickHouse database of that name).
// The connection comes from Cube's usual CUBEJS_DB_* variables (CUBEJS_DB_TYPE, _HOST, _PORT, _USER, _PASS,
// _NAME). A token without a valid appId is refused with a 400, before any model or connection is made.
'use strict';

const APP_ID = /^gitlab_project_[0-9]{1,20}$/;

function tenantOf(securityContext) {
  const appId = securityContext && securityContext.appId;
  if (typeof appId !== 'string' || !APP_ID.test(appId)) {
    const refused = new Error('appId must be gitlab_project_<digits>');
    refused.error = refused.message; // Cube's gateway answers an error carrying .error with a 400
    throw refused;
  }
  return appId;
}

module.exports = {
  contextToAppId: ({ securityContext }) => `CUBE_APP_${tenantOf(securityContext)}`,
  contextToOrchestratorId: ({ securityContext }) => `CUBE_ORCH_${tenantOf(securityContext)}`,
  driverFactory: ({ securityContext }) => ({
    type: process.env.CUBEJS_DB_TYPE || 'postgres',
    // PostgreSQL: the tenant's schema only (a tenant cannot name another's tables)
    options: `-c search_path=${tenantOf(securityContext)}`,
    max: Number(process.env.CUBEJS_DB_MAX_POOL || 4),
  }),
  // the proxy asks; nothing is refreshed in the background for tenants nobody asks about
  scheduledRefreshTimer: false,
};
