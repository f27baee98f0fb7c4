// Every tracked Snowplow event of one project: GitLab's table `snowplow_events`, read in the tenant's own
// ClickHouse database (cube.js makes gitlab_project_<id> every connection's database, so the table stays
// unqualified here). Members as GitLab's built-in dashboards query them (docs/clickhouse.md lists them).
cube('TrackedEvents', {
  sql: 'SELECT * FROM snowplow_events',
  refreshKey: { every: '10 second' },

  measures: {
    count: { type: 'count' },
    // every visitor, signed in or not (the dashboards' "anonymous users" switch adds the segment knownUsers)
    uniqueUsersCount: { sql: 'domain_userid', type: 'countDistinct' },
    pageViewsCount: { type: 'count', filters: [{ sql: `${CUBE}.event_name = 'page_view'` }] },
    linkClicksCount: { type: 'count', filters: [{ sql: `${CUBE}.event_name = 'link_click'` }] },
  },

  dimensions: {
    eventId: { sql: 'event_id', type: 'string', primaryKey: true, shown: true },
    appId: { sql: 'app_id', type: 'string' },
    eventName: { sql: 'event_name', type: 'string' },
    pageUrl: { sql: 'page_url', type: 'string' },
    pageUrlhosts: { sql: 'page_urlhost', type: 'string' },
    pageUrlpath: { sql: 'page_urlpath', type: 'string' },
    baseUrl: { sql: `concat(${CUBE}.page_urlscheme, '://', ${CUBE}.page_urlhost)`, type: 'string' },
    pageTitle: { sql: 'page_title', type: 'string' },
    pageReferrer: { sql: 'page_referrer', type: 'string' },
    userId: { sql: 'user_id', type: 'string' },
    domainUserid: { sql: 'domain_userid', type: 'string' },
    domainSessionid: { sql: 'domain_sessionid', type: 'string' },
    useragent: { sql: 'useragent', type: 'string' },
    agentName: { sql: 'br_family', type: 'string' },
    agentVersion: { sql: 'br_version', type: 'string' },
    browserLanguage: { sql: 'br_lang', type: 'string' },
    osName: { sql: 'os_name', type: 'string' },
    osFamily: { sql: 'os_family', type: 'string' },
    derivedTstamp: { sql: 'derived_tstamp', type: 'time' },
    collectorTstamp: { sql: 'collector_tstamp', type: 'time' },
  },

  segments: {
    knownUsers: { sql: `${CUBE}.user_id IS NOT NULL AND ${CUBE}.user_id != ''` },
  },
});
