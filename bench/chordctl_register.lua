-- wrk: register (PUT /v1/services/S/instances/ID with a JSON body) over 100 services x 10
-- instances; every request replaces one instance, so the data set stays the same size.
package.path = package.path .. ';' .. (os.getenv('BENCH_DIR') or 'bench') .. '/?.lua'
require('lib')

local n = 0
function init(args)
  seed()
  n = math.random(0, 999)
end

function request()
  n = n + 1
  local svc, inst = n % 100, math.floor(n / 100) % 10
  return wrk.format('PUT', string.format('/v1/services/bench-reg-%d/instances/i%d', svc, inst),
    { ['Content-Type'] = 'application/json' }, instance_json(inst))
end
