-- wrk: etcd's equivalent of chordctl_register_new.lua: a put of a NEW key with every request,
-- /services/SVC_PREFIX-S/ID over SERVICES prefixes, the same JSON instance as the value.
package.path = package.path .. ';' .. (os.getenv('BENCH_DIR') or 'bench') .. '/?.lua'
require('lib')

local prefix = os.getenv('SVC_PREFIX') or 'grow'
local services = tonumber(os.getenv('SERVICES') or '32')
local n = 0
local values = {}   -- the 200 instance bodies, base64, encoded once
function init(args)
  new_run_tag()
  for i = 0, 199 do values[i] = base64(instance_json(i)) end
end

function request()
  n = n + 1
  local key = string.format('/services/%s-%d/%s', prefix, n % services, new_id(n))
  return wrk.format('POST', '/v3/kv/put', { ['Content-Type'] = 'application/json' },
    string.format('{"key":"%s","value":"%s"}', base64(key), values[n % 200]))
end
