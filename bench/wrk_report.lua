-- wrk script: counts responses by class and records, in 10 ms buckets of wall-clock time, when
-- each thread saw a 2xx response, so the longest gap without any success can be computed.
-- done() prints one line "BENCH_JSON {...}" with the totals and latency percentiles (µs).
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(0, ts) -- CLOCK_REALTIME, shared by every thread and by the harness
  return tonumber(ts.tv_sec) * 1000 + math.floor(tonumber(ts.tv_nsec) / 1000000)
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok_buckets = {}
  ok, non2xx = 0, 0
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    ok = ok + 1
    ok_buckets[math.floor(now_ms() / 10)] = true
  else
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local seen, total_ok, total_non = {}, 0, 0
  for _, t in ipairs(threads) do
    total_ok = total_ok + t:get("ok")
    total_non = total_non + t:get("non2xx")
    for b, _ in pairs(t:get("ok_buckets")) do seen[b] = true end
  end
  local keys = {}
  for b, _ in pairs(seen) do table.insert(keys, b) end
  table.sort(keys)
  local gap, gap_at, first, last = 0, 0, keys[1] or 0, keys[#keys] or 0
  for i = 2, #keys do
    local d = keys[i] - keys[i - 1]
    if d > gap then gap, gap_at = d, keys[i - 1] end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "ok": %d, "non2xx": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "duration_us": %d, "max_gap_ms": %d, "gap_start_ms": %d, ' ..
    '"first_ok_ms": %d, "last_ok_ms": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "p999_us": %d, ' ..
    '"mean_us": %.1f, "max_us": %d}\n',
    summary.requests, total_ok, total_non, e.connect, e.read, e.write, e.status, e.timeout,
    summary.duration, gap * 10, gap_at * 10, first * 10, last * 10, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.mean, latency.max))
end
