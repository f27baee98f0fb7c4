// One row per Snowplow session (domain_sessionid), folded from the tenant's snowplow_events.
cube('Sessions', {
  sql: `SELECT domain_sessionid AS session_id,
               any(domain_userid) AS user_id,
               min(derived_tstamp) AS start_at,
               max(derived_tstamp) AS end_at,
               any(br_family) AS agent_name,
               any(br_version) AS agent_version,
               count() AS events
          FROM snowplow_events
         GROUP BY domain_sessionid`,
  refreshKey: { every: '10 second' },

  measures: {
    count: { type: 'count' },
    uniqueUsersCount: { sql: 'user_id', type: 'countDistinct' },
    averagePerUser: {
      sql: `count() / nullIf(uniqExact(${CUBE}.user_id), 0)`,
      type: 'number',
    },
    averageDurationMinutes: {
      sql: `(toUInt32(${CUBE}.end_at) - toUInt32(${CUBE}.start_at)) / 60`,
      type: 'avg',
    },
    repeatPercent: {
      sql: `100.0 * (count() - uniqExact(${CUBE}.user_id)) / nullIf(count(), 0)`,
      type: 'number',
    },
  },

  dimensions: {
    sessionId: { sql: 'session_id', type: 'string', primaryKey: true, shown: true },
    userId: { sql: 'user_id', type: 'string' },
    agentName: { sql: 'agent_name', type: 'string' },
    agentVersion: { sql: 'agent_version', type: 'string' },
    startAt: { sql: 'start_at', type: 'time' },
    endAt: { sql: 'end_at', type: 'time' },
  },
});
