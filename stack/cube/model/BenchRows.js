// 60,000 generated rows (about 300 bytes each as Cube JSON) for the large-result
// benchmark: a 50,000-row answer of about 15 MB without a table.
cube('BenchRows', {
  sql: `SELECT n, md5(n::text) AS a, md5((n + 1)::text) AS b, md5((n + 2)::text) AS c,
               md5((n + 3)::text) AS d, repeat('x', 64) AS e
          FROM generate_series(1, 60000) AS n`,
  refreshKey: { every: '1 hour' },

  measures: {
    count: { type: 'count' },
  },

  dimensions: {
    n: { sql: 'n', type: 'number', primaryKey: true, shown: true },
    a: { sql: 'a', type: 'string' },
    b: { sql: 'b', type: 'string' },
    c: { sql: 'c', type: 'string' },
    d: { sql: 'd', type: 'string' },
    e: { sql: 'e', type: 'string' },
  },
});
