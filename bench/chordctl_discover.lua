-- wrk: discover a 10-instance service, GET /v1/services/bench-disc.
package.path = package.path .. ';' .. (os.getenv('BENCH_DIR') or 'bench') .. '/?.lua'
require('lib')
wrk.method = 'GET'
wrk.path = '/v1/services/' .. (os.getenv('BENCH_SERVICE') or 'bench-disc')
