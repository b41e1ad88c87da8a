-- wrk: pods coming and going in SERVICE without changing its size: each pair of requests
-- registers a NEW instance id and then deregisters it (run it with one connection, -c1). Every request is one write; the
-- service keeps the size bench/run.sh filled it to (plus at most one per connection).
package.path = package.path .. ';' .. (os.getenv('BENCH_DIR') or 'bench') .. '/?.lua'
require('lib')

local service = os.getenv('SERVICE') or 'shape-big'
local n = 0
init = new_run_tag

function request()
  n = n + 1
  local id = new_id(math.floor((n + 1) / 2))
  local path = string.format('/v1/services/%s/instances/%s', service, id)
  if n % 2 == 1 then
    return wrk.format('PUT', path, { ['Content-Type'] = 'application/json' }, instance_json(7))
  end
  return wrk.format('DELETE', path)
end
