-- Shared helpers for the wrk scripts of bench/run.sh: base64 (etcd's JSON gateway wants keys
-- and values base64-encoded) and a `done` hook that prints one machine-readable line.

local b64chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'

-- Three bytes at a time with plain arithmetic (any Lua 5.1): about 3 us for a 50-byte key, 25
-- times faster than a bit-string version, so that scripts can encode a fresh key per request
-- without the load generator becoming the limit.
function base64(data)
  local out = {}
  for i = 1, #data, 3 do
    local a, b, c = data:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1, c2 = math.floor(n / 262144) % 64, math.floor(n / 4096) % 64
    local c3, c4 = math.floor(n / 64) % 64, n % 64
    out[#out + 1] = b64chars:sub(c1 + 1, c1 + 1) .. b64chars:sub(c2 + 1, c2 + 1) ..
      (b and b64chars:sub(c3 + 1, c3 + 1) or '=') .. (c and b64chars:sub(c4 + 1, c4 + 1) or '=')
  end
  return table.concat(out)
end

-- The instance body both systems store: the same bytes as a chordctl registration.
function instance_json(i)
  return string.format(
    '{"address":"10.99.0.%d","port":%d,"tags":["bench"],"metadata":{"origin":"wrk"}}',
    i + 1, 8000 + i)
end

-- One line for run.sh to parse: requests/s, p50 and p99 in ms, errors (connect, read, write,
-- timeout and non-2xx answers together).
function done(summary, latency, requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.timeout + e.status
  io.write(string.format('WRKRESULT rps=%.1f p50=%.3f p99=%.3f errors=%d requests=%d\n',
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    errors, summary.requests))
end

-- Each wrk thread gets its own number (setup runs in the main Lua state, once per thread), so
-- that threads start at different keys.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set('tid', threads)
end

function seed()
  math.randomseed(os.time() + 7919 * (tid or 0))
end

-- A random tag for this wrk run, so the ids of two runs never meet (call from init). Four bytes
-- from the kernel, not only the clock: two runs started in the same second (WARMUP=0, or two
-- wrk processes at once) must not draw the same tag.
run_tag = 0
function new_run_tag()
  seed()
  run_tag = math.random(0, 1e9)
  local f = io.open('/dev/urandom', 'rb')
  if f then
    local a, b, c, d = f:read(4):byte(1, 4)
    f:close()
    run_tag = ((a * 256 + b) * 256 + c) * 256 + d
  end
end

-- The n-th new instance id of this thread in this run.
function new_id(n)
  return string.format('t%d-%d-%d', tid or 0, run_tag, n)
end
