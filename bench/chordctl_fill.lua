-- wrk -t1: register instances f-1 .. f-LIMIT into SERVICE, again and again (one wrk thread, so
-- the ids are one sequence); bench/run.sh runs it until the service holds all LIMIT.
package.path = package.path .. ';' .. (os.getenv('BENCH_DIR') or 'bench') .. '/?.lua'
require('lib')

local service = os.getenv('SERVICE') or 'shape-big'
local limit = tonumber(os.getenv('LIMIT') or '10000')
local n = 0
function request()
  n = n % limit + 1
  return wrk.format('PUT', string.format('/v1/services/%s/instances/f-%d', service, n),
    { ['Content-Type'] = 'application/json' }, instance_json(n % 200))
end
