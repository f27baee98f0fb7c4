// The local stack's deliberately slow cube on ClickHouse (7 s by default: three rows of a third each, one row a
// block, as ClickHouse sleeps at most 3 s a block), longer than Cube's 5 s Continue-wait hold. Filter on a fresh
// label each time to miss Cube's result cache; the label goes through the sleep, so the filter cannot skip it.
// ../slow_seconds.js, beside the model's folder in the local stack, may set the sleep (the tests' stack shortens
// it); a model mounted on its own (a ConfigMap, compose) has no such file and keeps the default.
let slowSeconds = 7;
try {
  slowSeconds = require('../slow_seconds').slowSeconds();
} catch (e) {
  if (e.code !== 'MODULE_NOT_FOUND') throw e;
}

cube('SlowQueries', {
  sql: `SELECT concat('slow', toString(sleepEachRow(${slowSeconds / 3}))) AS label FROM numbers(3) SETTINGS max_block_size = 1`,
  refreshKey: { every: '1 second' },

  measures: {
    count: { type: 'count' },
  },

  dimensions: {
    label: { sql: 'label', type: 'string', primaryKey: true, shown: true },
  },
});
