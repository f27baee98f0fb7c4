// One row per session, folded from the events.
cube('Sessions', {
  sql: `SELECT domain_sessionid AS session_id,
               MIN(domain_userid) AS user_id,
               MIN(derived_tstamp) AS start_at,
               MAX(derived_tstamp) AS end_at
          FROM events
         GROUP BY domain_sessionid`,
  refreshKey: { every: '1 second' },

  measures: {
    count: { type: 'count' },
    uniqueUsersCount: { sql: 'user_id', type: 'countDistinct' },
    averagePerUser: {
      sql: `COUNT(*)::numeric / NULLIF(COUNT(DISTINCT ${CUBE}.user_id), 0)`,
      type: 'number',
    },
    averageDurationMinutes: {
      sql: `EXTRACT(EPOCH FROM (${CUBE}.end_at - ${CUBE}.start_at)) / 60`,
      type: 'avg',
    },
    repeatPercent: {
      sql: `100.0 * (COUNT(*) - COUNT(DISTINCT ${CUBE}.user_id)) / NULLIF(COUNT(*), 0)`,
      type: 'number',
    },
  },

  dimensions: {
    sessionId: { sql: 'session_id', type: 'string', primaryKey: true, shown: true },
    userId: { sql: 'user_id', type: 'string' },
    startAt: { sql: 'start_at', type: 'time' },
    endAt: { sql: 'end_at', type: 'time' },
  },
});
