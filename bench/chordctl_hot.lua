-- wrk: register (replace) instances h0 .. h999 of SERVICE over and over: every request is a
-- write into that one service, which keeps its size.
package.path = package.path .. ';' .. (os.getenv('BENCH_DIR') or 'bench') .. '/?.lua'
require('lib')

local service = os.getenv('SERVICE') or 'hot'
local n = 0
function init(args)
  seed()
  n = math.random(0, 999)
end

function request()
  n = n + 1
  return wrk.format('PUT', string.format('/v1/services/%s/instances/h%d', service, n % 1000),
    { ['Content-Type'] = 'application/json' }, instance_json(n % 200))
end
