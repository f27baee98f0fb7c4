// One row per visitor (domain_userid): when first seen, and in how many sessions.
cube('ReturningUsers', {
  sql: `SELECT domain_userid AS user_id,
               min(derived_tstamp) AS first_timestamp,
               uniqExact(domain_sessionid) AS sessions
          FROM snowplow_events
         GROUP BY domain_userid`,
  refreshKey: { every: '10 second' },

  measures: {
    count: { type: 'count' },
    returningUserPercentage: {
      sql: `100.0 * countIf(${CUBE}.sessions > 1) / nullIf(count(), 0)`,
      type: 'number',
    },
  },

  dimensions: {
    userId: { sql: 'user_id', type: 'string', primaryKey: true, shown: true },
    first_timestamp: { sql: 'first_timestamp', type: 'time' },
  },
});
