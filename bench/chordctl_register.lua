-- wrk: register (PUT /v1/services/S/instances/ID with a JSON body) over 100 services x 10
-- instances; every request replaces one instance, so the data set stays the same size.
-- With SERVICE set, every request goes to that one service instead, over COUNT (default 10)
-- instances i0 .. i(COUNT-1).
package.path = package.path .. ';' .. (os.getenv('BENCH_DIR') or 'bench') .. '/?.lua'
require('lib')

local service = os.getenv('SERVICE')
local count = tonumber(os.getenv('COUNT') or '10')
local n = 0
function init(args)
  seed()
  n = math.random(0, 999)
end

function request()
  n = n + 1
  local path
  local inst
  if service then
    inst = n % count
    path = string.format('/v1/services/%s/instances/i%d', service, inst)
  else
    local svc = n % 100
    inst = math.floor(n / 100) % count
    path = string.format('/v1/services/bench-reg-%d/instances/i%d', svc, inst)
  end
  return wrk.format('PUT', path, { ['Content-Type'] = 'application/json' },
    instance_json(inst % 200))
end
