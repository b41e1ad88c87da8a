-- wrk: etcd's equivalent of discover, POST /v3/kv/range over the prefix /services/bench-disc/
-- (range_end is the prefix with its last byte incremented: '/' + 1 = '0').
package.path = package.path .. ';' .. (os.getenv('BENCH_DIR') or 'bench') .. '/?.lua'
require('lib')
wrk.method = 'POST'
wrk.path = '/v3/kv/range'
wrk.headers['Content-Type'] = 'application/json'
wrk.body = string.format('{"key":"%s","range_end":"%s"}',
  base64('/services/bench-disc/'), base64('/services/bench-disc0'))
