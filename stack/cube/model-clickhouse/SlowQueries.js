// The local stack's deliberately slow cube on ClickHouse (7 s by default, ../slow_seconds.js: three rows of a
// third each, one row a block, as ClickHouse sleeps at most 3 s a block), longer than Cube's 5 s Continue-wait
// hold. Filter on a fresh label each time to miss Cube's result cache; the label goes through the sleep, so the
// filter cannot skip it.
import { slowSeconds } from '../slow_seconds';

cube('SlowQueries', {
  sql: `SELECT concat('slow', toString(sleepEachRow(${slowSeconds() / 3}))) AS label FROM numbers(3) SETTINGS max_block_size = 1`,
  refreshKey: { every: '1 second' },

  measures: {
    count: { type: 'count' },
  },

  dimensions: {
    label: { sql: 'label', type: 'string', primaryKey: true, shown: true },
  },
});
