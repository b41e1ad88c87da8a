-- Shared helpers for the wrk scripts of bench/run.sh: base64 (etcd's JSON gateway wants keys
-- and values base64-encoded) and a `done` hook that prints one machine-readable line.

local b64chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'

function base64(data)
  return ((data:gsub('.', function(x)
    local r, b = '', x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and '1' or '0') end
    return r
  end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if #x < 6 then return '' end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
    return b64chars:sub(c + 1, c + 1)
  end) .. ({ '', '==', '=' })[#data % 3 + 1])
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

-- A random tag for this wrk run, so the ids of two runs never meet (call from init).
run_tag = 0
function new_run_tag()
  seed()
  run_tag = math.random(0, 1e9)
end

-- The n-th new instance id of this thread in this run.
function new_id(n)
  return string.format('t%d-%d-%d', tid or 0, run_tag, n)
end
