-- wrk script: POST AuthZEN evaluation bodies, cycling through a file of one JSON body a line.
-- Usage: wrk -t1 -c4 -d10s -s bench/authzen.lua http://127.0.0.1:PORT/access/v1/evaluation -- BODIES
-- Non-2xx answers are counted by wrk itself (errors.status). done() prints one line
-- "WRK_JSON {...}" with the counts and latency percentiles (µs).

local requests = {}
local index = 0

function init(args)
  local path = args[1]
  local file = assert(io.open(path, "r"), "cannot open bodies file " .. tostring(path))
  local headers = { ["Content-Type"] = "application/json" }
  for line in file:lines() do
    if #line > 0 then
      requests[#requests + 1] = wrk.format("POST", nil, headers, line)
    end
  end
  file:close()
  assert(#requests > 0, "no bodies in " .. path)
end

function request()
  index = index % #requests + 1
  return requests[index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
