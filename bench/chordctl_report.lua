-- wrk: a status report (the heartbeat) for instance f-I of SERVICE, I cycling through
-- 1..COUNT from a random start per thread: every request changes one existing instance.
package.path = package.path .. ';' .. (os.getenv('BENCH_DIR') or 'bench') .. '/?.lua'
require('lib')

local service = os.getenv('SERVICE') or 'shape-big'
local count = tonumber(os.getenv('COUNT') or '10000')
local n = 0
function init(args)
  seed()
  n = math.random(0, count - 1)
end

function request()
  n = n + 1
  return wrk.format('PUT', string.format('/v1/services/%s/instances/f-%d/status', service, n % count + 1),
    { ['Content-Type'] = 'application/json' },
    string.format('{"state":"passing","latency_ms":%d.5,"load":0.25}', n % 50))
end
