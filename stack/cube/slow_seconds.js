// How long the local stack's deliberately slow cube sleeps, read from the environment the local stack gives Cube
// (model files cannot read process.env themselves: Cube compiles them in a VM without Node's globals). The tests'
// stack makes it short, with a Continue-wait hold as short (CUBE_CONTINUE_WAIT); make run and the benchmarks keep
// Cube's own 5 s hold and 7 s of sleep. A model mounted without this file (a ConfigMap, compose) sleeps 7 s.
exports.slowSeconds = () => Number(process.env.CUBE_SLOW_SECONDS || 7);
