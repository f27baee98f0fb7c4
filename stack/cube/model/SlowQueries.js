// A deliberately slow cube (7 s of pg_sleep, longer than Cube's 5 s Continue-wait
// hold) so the server-side Continue-wait loop can be exercised for real. Filter on
// a fresh label each time to miss Cube's result cache.
cube('SlowQueries', {
  // The label goes through pg_sleep (volatile), so PostgreSQL cannot fold a filter on it away.
  sql: `SELECT ('slow' || pg_sleep(7)::text) AS label`,
  refreshKey: { every: '1 second' },

  measures: {
    count: { type: 'count' },
  },

  dimensions: {
    label: { sql: 'label', type: 'string', primaryKey: true, shown: true },
  },
});
