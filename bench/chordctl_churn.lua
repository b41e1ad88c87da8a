-- wrk: pods coming and going in SERVICE without changing its size: each pair of requests
-- registers a NEW instance id and then deregisters it (run it with one connection, -c1). Every
-- request is one write; the service keeps the size bench/run.sh filled it to (give or take the
-- one or two a stopped run leaves).
-- The next step is taken when an answer arrives, not when a request is made: wrk calls
-- request() once more than it sends (to check the script), which would otherwise make the first
-- request a DELETE of an id never registered (a 404 in the ERRORS column of every run).
package.path = package.path .. ';' .. (os.getenv('BENCH_DIR') or 'bench') .. '/?.lua'
require('lib')

local service = os.getenv('SERVICE') or 'shape-big'
local k, put = 1, true
init = new_run_tag

function request()
  local path = string.format('/v1/services/%s/instances/%s', service, new_id(k))
  if put then
    return wrk.format('PUT', path, { ['Content-Type'] = 'application/json' }, instance_json(7))
  end
  return wrk.format('DELETE', path)
end

function response(status, headers, body)
  if put then
    put = false
  else
    put, k = true, k + 1
  end
end
