// A deliberately slow cube (7 s of pg_sleep by default, longer than Cube's 5 s Continue-wait hold;
// ../slow_seconds.js) so the server-side Continue-wait loop can be exercised for real. Filter on
// a fresh label each time to miss Cube's result cache.
import { slowSeconds } from '../slow_seconds';

cube('SlowQueries', {
  // The label goes through pg_sleep (volatile), so PostgreSQL cannot fold a filter on it away.
  sql: `SELECT ('slow' || pg_sleep(${slowSeconds()})::text) AS label`,
  refreshKey: { every: '1 second' },

  measures: {
    count: { type: 'count' },
  },

  dimensions: {
    label: { sql: 'label', type: 'string', primaryKey: true, shown: true },
  },
});
