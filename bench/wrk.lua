-- wrk script for the benchmarks: POST (or GET) with the caller's token; optional
-- per-request variation of the query (so coalescing does not turn a pass-through
-- benchmark into a cache benchmark); prints one JSON summary line.
local method = os.getenv("BENCH_METHOD") or "POST"
local path = os.getenv("BENCH_PATH") or "/"
local token = os.getenv("BENCH_TOKEN")
local auth = os.getenv("BENCH_AUTHORIZATION")
local vary = os.getenv("BENCH_VARY") == "1"
local accept_encoding = os.getenv("BENCH_ACCEPT_ENCODING")
local threads = 0
local counter = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function request()
  counter = counter + 1
  local headers = { ["Content-Type"] = "application/json" }
  if token then headers["PRIVATE-TOKEN"] = token end
  if auth then headers["Authorization"] = auth end
  if accept_encoding then headers["Accept-Encoding"] = accept_encoding end
  local body = nil
  if method == "POST" then
    if vary then
      body = '{"query":{"measures":["TrackedEvents.count"],"offset":' .. (counter * 16 + tid) .. '}}'
    else
      body = '{"query":{"measures":["TrackedEvents.count"]}}'
    end
  end
  return wrk.format(method, path, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"socket_errors":%d,"timeouts":%d,"non2xx":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
