-- wrk: register instances f-1 .. f-LIMIT into SERVICE, each once, over many connections.
-- Thread t of THREADS (its number from lib.lua's setup) sends f-t, f-(t+THREADS), ...; a thread
-- that has sent its share only asks /healthz once a second. bench/run.sh stops wrk as soon as
-- the catalog counts LIMIT instances (and runs it again if some failed).
package.path = package.path .. ';' .. (os.getenv('BENCH_DIR') or 'bench') .. '/?.lua'
require('lib')

local service = os.getenv('SERVICE') or 'shape-big'
local limit = tonumber(os.getenv('LIMIT') or '10000')
local threads = tonumber(os.getenv('THREADS') or '1')
local n, first, resent, sent_all

function init(args)
  first = tid or 1
  n, resent, sent_all = first, false, false
end

function delay()
  return sent_all and 1000 or 0
end

-- wrk calls request() once on the first thread's state to check the script, and throws that
-- request away: the first id of a share is sent once more at its end.
function request()
  local i = n
  if n > limit then
    if resent or first > limit then
      sent_all = true
      return wrk.format('GET', '/healthz')
    end
    resent, i = true, first
  end
  n = n + threads
  return wrk.format('PUT', string.format('/v1/services/%s/instances/f-%d', service, i),
    { ['Content-Type'] = 'application/json' }, instance_json(i % 200))
end
