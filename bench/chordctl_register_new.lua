-- wrk: register a NEW instance id with every request (pods come and go), over SERVICES services
-- named SVC_PREFIX-0 .. SVC_PREFIX-(SERVICES-1), which grow during the run. Ids are unique per
-- wrk thread (thread number, a random run tag, a counter), so no request replaces an instance.
package.path = package.path .. ';' .. (os.getenv('BENCH_DIR') or 'bench') .. '/?.lua'
require('lib')

local prefix = os.getenv('SVC_PREFIX') or 'grow'
local services = tonumber(os.getenv('SERVICES') or '32')
local n = 0
init = new_run_tag

function request()
  n = n + 1
  return wrk.format('PUT',
    string.format('/v1/services/%s-%d/instances/%s', prefix, n % services, new_id(n)),
    { ['Content-Type'] = 'application/json' }, instance_json(n % 200))
end
