// One row per user: when they were first seen and in how many sessions.
cube('ReturningUsers', {
  sql: `SELECT domain_userid AS user_id,
               MIN(derived_tstamp) AS first_timestamp,
               COUNT(DISTINCT domain_sessionid) AS sessions
          FROM events
         GROUP BY domain_userid`,
  refreshKey: { every: '1 second' },

  measures: {
    count: { type: 'count' },
    returningUserPercentage: {
      sql: `100.0 * COUNT(*) FILTER (WHERE ${CUBE}.sessions > 1) / NULLIF(COUNT(*), 0)`,
      type: 'number',
    },
  },

  dimensions: {
    userId: { sql: 'user_id', type: 'string', primaryKey: true, shown: true },
    first_timestamp: { sql: 'first_timestamp', type: 'time' },
  },
});
