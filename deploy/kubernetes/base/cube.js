// Cube's tenant configuration for product-analytics-proxy: the one file the local stack, the tests, docker
// compose and the Kubernetes manifests all run (mounted as Cube's /cube/conf/cube.js).
//
// GitLab's convention: the JWT the proxy signs carries appId = "gitlab_project_<id>". That appId selects
// - the tenant's compiled data model (contextToAppId),
// - its own query orchestrator: its own connection pool and result cache (contextToOrchestratorId; without it
//   Cube shares one pool and one result cache between tenants),
// - its data, by the store CUBEJS_DB_TYPE names:
//   - postgres (the default): the schema "gitlab_project_<id>" as the first and only search_path entry, so the
//     model's tables are unqualified and a tenant cannot name another's;
//   - clickhouse (GitLab's own store): the database "gitlab_project_<id>", for every connection of the tenant's
//     pool. The driver's own CUBEJS_DB_NAME is overridden, never used: driver 0.28 prefers CUBEJS_DB_NAME to a
//     `database` this file names, so the database is also given as the connection's query option, which that
//     driver takes last; newer drivers take `database` itself. Cube logs a warning at start when it is set.
// Any other CUBEJS_DB_TYPE, or several data sources (CUBEJS_DATASOURCES), is refused at start: Cube does not
// serve a store whose tenants this file cannot keep apart. The connection itself comes from Cube's usual
// variables (CUBEJS_DB_HOST, _PORT, _USER, _PASS; on PostgreSQL also _NAME, the database holding the schemas).
// A token without a valid appId is refused with a 400, before any model or connection is made.
'use strict';

const APP_ID = /^gitlab_project_[0-9]{1,20}$/;

/** How each store keeps one tenant's rows from another's: the driver options for one tenant. */
const STORES = {
  postgres: (tenant) => ({
    type: 'postgres',
    options: `-c search_path=${tenant}`,
    max: Number(process.env.CUBEJS_DB_MAX_POOL || 4),
  }),
  clickhouse: (tenant) => ({
    type: 'clickhouse',
    database: tenant,
    queryOptions: { database: tenant },
  }),
};

/** The store this Cube serves, checked once when Cube loads this file: what cannot be isolated never starts. */
function storeOf(env) {
  const type = env.CUBEJS_DB_TYPE || 'postgres';
  if (!Object.prototype.hasOwnProperty.call(STORES, type)) {
    throw new Error(
      `CUBEJS_DB_TYPE=${type}: this tenant configuration keeps projects apart on ${Object.keys(STORES).join(' and ')}` +
        ' only (a schema or a database per project); set one of them, or ship a configuration that isolates' +
        ` ${type}`,
    );
  }
  if (env.CUBEJS_DATASOURCES) {
    throw new Error(
      'CUBEJS_DATASOURCES is set: this tenant configuration selects one data source per project by its appId;' +
        ' remove CUBEJS_DATASOURCES (and the CUBEJS_DS_* variables)',
    );
  }
  if (type === 'clickhouse' && env.CUBEJS_DB_NAME) {
    console.warn(
      JSON.stringify({
        message:
          `CUBEJS_DB_NAME=${env.CUBEJS_DB_NAME} is ignored on ClickHouse: each project reads its own database` +
          ' gitlab_project_<id>; remove the variable',
      }),
    );
  }
  return STORES[type];
}

const store = storeOf(process.env);

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
  driverFactory: ({ securityContext, dataSource }) => {
    if (dataSource !== undefined && dataSource !== 'default') {
      throw new Error(`data source ${dataSource}: only the default data source is kept apart per project`);
    }
    return store(tenantOf(securityContext));
  },
  // the proxy asks; nothing is refreshed in the background for tenants nobody asks about
  scheduledRefreshTimer: false,
};
