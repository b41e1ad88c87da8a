-- wrk: etcd's equivalent of a register, POST /v3/kv/put through the JSON gateway, key
-- /services/bench-reg-S/iID and the same JSON instance as the value, both base64.
package.path = package.path .. ';' .. (os.getenv('BENCH_DIR') or 'bench') .. '/?.lua'
require('lib')

local bodies = {}
local n = 0
function init(args)
  for svc = 0, 99 do
    for inst = 0, 9 do
      local key = string.format('/services/bench-reg-%d/i%d', svc, inst)
      bodies[#bodies + 1] = string.format('{"key":"%s","value":"%s"}',
        base64(key), base64(instance_json(inst)))
    end
  end
  seed()
  n = math.random(0, #bodies - 1)
end

function request()
  n = n + 1
  return wrk.format('POST', '/v3/kv/put', { ['Content-Type'] = 'application/json' },
    bodies[n % #bodies + 1])
end
