// Every tracked Snowplow-like event of one project (the tenant's schema is on the search_path).
cube('TrackedEvents', {
  sql: 'SELECT * FROM events',
  refreshKey: { every: '1 second' },

  measures: {
    count: { type: 'count' },
    uniqueUsersCount: { sql: 'user_id', type: 'countDistinct' },
    pageViewsCount: { type: 'count', filters: [{ sql: `${CUBE}.event_name = 'page_view'` }] },
  },

  dimensions: {
    eventId: { sql: 'event_id', type: 'string', primaryKey: true, shown: true },
    eventName: { sql: 'event_name', type: 'string' },
    pageUrlpath: { sql: 'page_urlpath', type: 'string' },
    pageUrl: { sql: 'page_url', type: 'string' },
    pageTitle: { sql: 'page_title', type: 'string' },
    userId: { sql: 'user_id', type: 'string' },
    agentName: { sql: 'agent_name', type: 'string' },
    agentVersion: { sql: 'agent_version', type: 'string' },
    osName: { sql: 'os_name', type: 'string' },
    browserLanguage: { sql: 'br_lang', type: 'string' },
    derivedTstamp: { sql: 'derived_tstamp', type: 'time' },
  },

  segments: {
    knownUsers: { sql: `${CUBE}.user_id IS NOT NULL` },
  },
});
