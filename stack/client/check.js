'use strict';
// Runs GitLab's dashboards' own Cube client against the proxy, set up as GitLab's
// frontend sets it up (HttpTransport, method POST, apiUrl .../product_analytics/request),
// and prints what it got as one JSON object.
const { CubeApi, HttpTransport } = require('@cubejs-client/core');

const [proxyUrl, projectId, token, slowLabel] = process.argv.slice(2);
const cubeApi = new CubeApi('1', {
  transport: new HttpTransport({
    authorization: '1',
    apiUrl: `${proxyUrl}/api/v4/projects/${projectId}/product_analytics/request`,
    method: 'POST',
    headers: { 'PRIVATE-TOKEN': token, 'X-Requested-With': 'XMLHttpRequest' },
  }),
});

const perDay = (measure, dimension) => ({
  measures: [measure],
  timeDimensions: [{ dimension, granularity: 'day', dateRange: 'last 7 days' }],
  order: { [dimension]: 'asc' },
});

async function main() {
  const out = {};
  out.trackedEventsQuery = perDay('TrackedEvents.count', 'TrackedEvents.derivedTstamp');
  out.trackedEvents = (await cubeApi.load(out.trackedEventsQuery)).rawData();
  out.sessionsQuery = perDay('Sessions.count', 'Sessions.startAt');
  out.sessions = (await cubeApi.load(out.sessionsQuery)).rawData();
  const meta = await cubeApi.meta();
  out.cubes = meta.cubes.map((c) => c.name).sort();
  out.slowQuery = { measures: ['SlowQueries.count'], filters: [{ member: 'SlowQueries.label', operator: 'equals', values: [slowLabel] }] };
  const started = Date.now();
  out.slow = (await cubeApi.load(out.slowQuery)).rawData();
  out.slowMs = Date.now() - started;
  try {
    await cubeApi.load({ measures: ['TrackedEvents.noSuchMeasure'] });
    out.error = null;
  } catch (e) {
    out.error = String(e.message || e);
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
