// The query explorer: builds a Cube query and runs it through this proxy's own API.
// Rules it keeps: a token lives in sessionStorage only and goes out as PRIVATE-TOKEN (never in a URL);
// without one, GitLab's session (same origin) is the credential, with GitLab's CSRF token on POSTs;
// everything an answer carries is put in the page as text (textContent), never as HTML.
'use strict';

(() => {
  const TOKEN_KEY = 'product-analytics-explorer-token';
  const PROJECT_KEY = 'product-analytics-explorer-project';
  const MAX_WAIT_ROUNDS = 60;
  const OPERATORS = ['equals', 'notEquals', 'contains', 'notContains', 'gt', 'gte', 'lt', 'lte', 'set', 'notSet'];
  const body = document.body;
  const $ = (id) => document.getElementById(id);
  let csrfToken = null;
  let members = { measures: [], dimensions: [], time: [] };
  let chart = null;

  const storedToken = () => sessionStorage.getItem(TOKEN_KEY) || '';

  function showCredential() {
    const sessions = body.dataset.sessions === 'on';
    $('credential').textContent = storedToken()
      ? 'Calls carry the token kept in this tab (PRIVATE-TOKEN).'
      : sessions
        ? 'No token kept: calls carry your GitLab session (when this page is on GitLab\'s origin).'
        : 'No token kept, and this proxy takes tokens only: paste one.';
  }

  function setStatus(text) {
    $('status').textContent = text;
  }

  function showError(message) {
    $('error').textContent = message || '';
    $('error').hidden = !message;
  }

  function pause(ms) {
    return new Promise((resolve) => { setTimeout(resolve, ms); });
  }

  // GitLab renders the session's CSRF token into every page's csrf-token meta tag: read it from one of them
  // (same origin; parsing runs no script of the page).
  async function sessionCsrfToken() {
    if (csrfToken) return csrfToken;
    const resp = await fetch(body.dataset.csrfPage, { credentials: 'same-origin' });
    const page = new DOMParser().parseFromString(await resp.text(), 'text/html');
    const tag = page.querySelector('meta[name="csrf-token"]');
    csrfToken = tag ? tag.getAttribute('content') : null;
    return csrfToken;
  }

  function endpointUrl(endpoint) {
    const project = $('project').value.trim();
    if (!project) throw new Error('Pick a project first: its numeric id or its full path.');
    return `${body.dataset.apiRoot}/projects/${encodeURIComponent(project)}/product_analytics/request/${endpoint}`;
  }

  // One API call; on Cube's "Continue wait" (the proxy's own wait ran out) it asks again, showing the rounds.
  async function call(endpoint, method, payload) {
    const url = endpointUrl(endpoint);
    const headers = { Accept: 'application/json' };
    const token = storedToken();
    if (token) {
      headers['PRIVATE-TOKEN'] = token;
    } else if (method !== 'GET') {
      headers['X-Requested-With'] = 'XMLHttpRequest';
      const csrf = await sessionCsrfToken();
      if (csrf) headers['X-CSRF-Token'] = csrf;
    }
    const init = { method, headers, credentials: 'same-origin' };
    if (payload !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(payload);
    }
    for (let round = 1; round <= MAX_WAIT_ROUNDS; round += 1) {
      const resp = await fetch(url, init);
      let answer;
      try {
        answer = await resp.json();
      } catch (_) {
        throw new Error(`${resp.status} ${resp.statusText}: the answer was not JSON`);
      }
      if (resp.ok && answer && answer.error === 'Continue wait') {
        setStatus(`Cube is still working on it (Continue wait, round ${round})…`);
        await pause(1000);
        continue;
      }
      if (!resp.ok || (answer && answer.error)) {
        const message = (answer && (answer.message || answer.error)) || `${resp.status} ${resp.statusText}`;
        throw new Error(`${resp.status}: ${typeof message === 'string' ? message : JSON.stringify(message)}`);
      }
      return answer;
    }
    throw new Error(`Cube was still working after ${MAX_WAIT_ROUNDS} rounds; try again later.`);
  }

  function fillSelect(select, names, keep) {
    const chosen = new Set(Array.from(select.selectedOptions, (o) => o.value));
    select.replaceChildren(...keep);
    for (const name of names) {
      const option = document.createElement('option');
      option.value = name;
      option.textContent = name;
      option.selected = chosen.has(name);
      select.append(option);
    }
  }

  function showMeta(meta) {
    const list = $('cubes');
    list.replaceChildren();
    members = { measures: [], dimensions: [], time: [] };
    for (const cube of meta.cubes || []) {
      const item = document.createElement('li');
      const name = document.createElement('strong');
      name.textContent = cube.name;
      const detail = document.createElement('span');
      detail.textContent = ` ${cube.title || ''}: ${(cube.measures || []).length} measures, ${(cube.dimensions || []).length} dimensions`;
      item.append(name, detail);
      list.append(item);
      for (const m of cube.measures || []) members.measures.push(m.name);
      for (const d of cube.dimensions || []) {
        members.dimensions.push(d.name);
        if (d.type === 'time') members.time.push(d.name);
      }
    }
    fillSelect($('measures'), members.measures, []);
    fillSelect($('dimensions'), members.dimensions, []);
    const none = document.createElement('option');
    none.value = '';
    none.textContent = '(none)';
    fillSelect($('time-dimension'), members.time, [none]);
    for (const select of document.querySelectorAll('#filters select.member')) {
      fillSelect(select, [...members.dimensions, ...members.measures], []);
    }
    buildQuery();
  }

  function addFilter() {
    const row = document.createElement('div');
    row.className = 'row filter';
    const member = document.createElement('select');
    member.className = 'member';
    member.setAttribute('aria-label', 'Filter member');
    fillSelect(member, [...members.dimensions, ...members.measures], []);
    const operator = document.createElement('select');
    operator.className = 'operator';
    operator.setAttribute('aria-label', 'Filter operator');
    fillSelect(operator, OPERATORS, []);
    const values = document.createElement('input');
    values.className = 'values';
    values.placeholder = 'values, comma-separated';
    values.setAttribute('aria-label', 'Filter values');
    const remove = document.createElement('button');
    remove.type = 'button';
    remove.textContent = 'Remove';
    remove.addEventListener('click', () => { row.remove(); buildQuery(); });
    for (const input of [member, operator, values]) input.addEventListener('change', buildQuery);
    values.addEventListener('input', buildQuery);
    row.append(member, operator, values, remove);
    $('filters').append(row);
    buildQuery();
  }

  function dateRange(text) {
    const parts = text.split(/\s+to\s+/);
    return parts.length === 2 ? parts.map((p) => p.trim()) : text.trim();
  }

  // The builder's choices as a Cube query, written into the editable query box.
  function buildQuery() {
    const query = {};
    const measures = Array.from($('measures').selectedOptions, (o) => o.value);
    const dimensions = Array.from($('dimensions').selectedOptions, (o) => o.value);
    if (measures.length) query.measures = measures;
    if (dimensions.length) query.dimensions = dimensions;
    const time = $('time-dimension').value;
    if (time) {
      const timeDimension = { dimension: time };
      if ($('granularity').value) timeDimension.granularity = $('granularity').value;
      if ($('date-range').value.trim()) timeDimension.dateRange = dateRange($('date-range').value);
      query.timeDimensions = [timeDimension];
      query.order = { [time]: 'asc' };
    }
    const filters = [];
    for (const row of document.querySelectorAll('#filters .filter')) {
      const member = row.querySelector('.member').value;
      const operator = row.querySelector('.operator').value;
      const values = row.querySelector('.values').value.split(',').map((v) => v.trim()).filter((v) => v);
      if (!member) continue;
      filters.push(operator === 'set' || operator === 'notSet' ? { member, operator } : { member, operator, values });
    }
    if (filters.length) query.filters = filters;
    const limit = parseInt($('limit').value, 10);
    if (limit > 0) query.limit = limit;
    $('query').value = JSON.stringify(query, null, 2);
  }

  function readQuery() {
    try {
      return JSON.parse($('query').value);
    } catch (error) {
      throw new Error(`The query box is not JSON: ${error.message}`);
    }
  }

  function showRows(rows) {
    const columns = [];
    for (const row of rows) for (const key of Object.keys(row)) if (!columns.includes(key)) columns.push(key);
    const head = document.createElement('tr');
    for (const column of columns) {
      const th = document.createElement('th');
      th.textContent = column;
      head.append(th);
    }
    $('rows').tHead.replaceChildren(head);
    const tbody = $('rows').tBodies[0];
    tbody.replaceChildren();
    for (const row of rows) {
      const tr = document.createElement('tr');
      for (const column of columns) {
        const td = document.createElement('td');
        const value = row[column];
        td.textContent = value === null || value === undefined ? '' : String(value);
        tr.append(td);
      }
      tbody.append(tr);
    }
  }

  // A line chart over the time dimension, else a bar chart over the first dimension; one series per measure.
  function showChart(query, rows) {
    if (chart) {
      chart.destroy();
      chart = null;
    }
    const measures = query.measures || [];
    if (!measures.length || !rows.length || !window.Chart) return;
    const time = (query.timeDimensions || [])[0];
    let labelKey = null;
    if (time && time.granularity) labelKey = `${time.dimension}.${time.granularity}`;
    else if ((query.dimensions || []).length) [labelKey] = query.dimensions;
    const labels = rows.map((row, index) => (labelKey ? String(row[labelKey] ?? '') : String(index + 1)));
    chart = new window.Chart($('chart'), {
      type: time && time.granularity ? 'line' : 'bar',
      data: {
        labels,
        datasets: measures.map((measure) => ({ label: measure, data: rows.map((row) => Number(row[measure] ?? 0)) })),
      },
      options: { animation: false, responsive: false },
    });
  }

  async function run(what) {
    showError('');
    const started = performance.now();
    try {
      if (what === 'meta') {
        setStatus('Asking for the cubes…');
        showMeta(await call('meta', 'GET'));
      } else {
        const query = readQuery();
        setStatus(what === 'dry-run' ? 'Checking the query…' : 'Running the query…');
        const answer = await call(what, 'POST', { query });
        if (what === 'dry-run') {
          $('normalized').textContent = JSON.stringify(answer.normalizedQueries || answer, null, 2);
        } else {
          const rows = (answer.results || []).flatMap((result) => result.data || []);
          showRows(rows);
          showChart(query, rows);
        }
      }
      setStatus(`${what}: done in ${Math.round(performance.now() - started)} ms`);
    } catch (error) {
      setStatus(`${what}: failed`);
      showError(error.message || String(error));
    }
  }

  $('project').value = sessionStorage.getItem(PROJECT_KEY) || '';
  $('project').addEventListener('change', () => sessionStorage.setItem(PROJECT_KEY, $('project').value.trim()));
  $('save-token').addEventListener('click', () => {
    const token = $('token').value.trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    $('token').value = '';
    showCredential();
  });
  $('forget-token').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showCredential();
  });
  $('load-meta').addEventListener('click', () => run('meta'));
  $('dry-run').addEventListener('click', () => run('dry-run'));
  $('run').addEventListener('click', () => run('load'));
  $('add-filter').addEventListener('click', addFilter);
  for (const id of ['measures', 'dimensions', 'time-dimension', 'granularity', 'date-range', 'limit']) {
    $(id).addEventListener('change', buildQuery);
  }
  showCredential();
  buildQuery();
})();
