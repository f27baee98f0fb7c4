// One analytics dashboard panel, as GitLab's cube_analytics.js builds its Cube client: token '1' (the proxy
// adds the real credential), POST through the product analytics API with the page's CSRF token, the
// session cookie sent by the browser (same-origin).
(async () => {
  const status = document.getElementById('status');
  const projectId = document.body.dataset.projectId;
  const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
  const cubeApi = new window.cubejs.CubeApi('1', {
    transport: new window.cubejs.HttpTransport({
      apiUrl: `/api/v4/projects/${projectId}/product_analytics/request`,
      method: 'POST',
      headers: { 'X-CSRF-Token': csrfToken, 'X-Requested-With': 'XMLHttpRequest' },
      credentials: 'same-origin',
    }),
  });
  let progress = 0;
  try {
    const meta = await cubeApi.meta();
    for (const cube of meta.cubes) {
      const item = document.createElement('li');
      item.textContent = cube.name;
      document.getElementById('cubes').append(item);
    }
    const resultSet = await cubeApi.load(
      {
        measures: ['TrackedEvents.count'],
        timeDimensions: [
          { dimension: 'TrackedEvents.derivedTstamp', granularity: 'day', dateRange: 'last 30 days' },
        ],
        order: { 'TrackedEvents.derivedTstamp': 'asc' },
      },
      {
        castNumerics: true,
        progressCallback: () => {
          progress += 1;
          document.getElementById('progress').textContent = String(progress);
        },
      },
    );
    const body = document.querySelector('#days tbody');
    for (const row of resultSet.tablePivot()) {
      const tr = document.createElement('tr');
      const day = document.createElement('td');
      day.textContent = row['TrackedEvents.derivedTstamp.day'];
      const count = document.createElement('td');
      count.textContent = `${typeof row['TrackedEvents.count']}:${row['TrackedEvents.count']}`;
      tr.append(day, count);
      body.append(tr);
    }
    status.textContent = 'done';
  } catch (error) {
    status.textContent = `error: ${error.message || error}`;
  }
})();
