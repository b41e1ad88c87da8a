-- wrk: GET /v1/locate/KEY over random keys (a lookup through the ring per request).
package.path = package.path .. ';' .. (os.getenv('BENCH_DIR') or 'bench') .. '/?.lua'
require('lib')
function init(args)
  seed()
end
function request()
  return wrk.format('GET', string.format('/v1/locate/key-%d', math.random(0, 999999)))
end
