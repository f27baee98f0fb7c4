// A deliberately slow cube (7 s of pg_sleep by default, longer than Cube's 5 s Continue-wait hold)
// so the server-side Continue-wait loop can be exercised for real. Filter on a fresh label each
// time to miss Cube's result cache.
// ../slow_seconds.js, beside the model's folder in the local stack, may set the sleep (the tests' stack shortens
// it); a model mounted on its own (a ConfigMap, compose) has no such file and keeps the default.
let slowSeconds = 7;
try {
  slowSeconds = require('../slow_seconds').slowSeconds();
} catch (e) {
  if (e.code !== 'MODULE_NOT_FOUND') throw e;
}

cube('SlowQueries', {
  // The label goes through pg_sleep (volatile), so PostgreSQL cannot fold a filter on it away.
  sql: `SELECT ('slow' || pg_sleep(${slowSeconds})::text) AS label`,
  refreshKey: { every: '1 second' },

  measures: {
    count: { type: 'count' },
  },

  dimensions: {
    label: { sql: 'label', type: 'string', primaryKey: true, shown: true },
  },
});
