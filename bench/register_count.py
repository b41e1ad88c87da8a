"""Register COUNT new instance ids per thread over SERVICES services through one agent.

usage: register_count.py HOST:PORT COUNT THREADS PREFIX [SERVICES]

Each of THREADS threads keeps one HTTP/1.1 connection and sends exactly COUNT PUTs of new ids
(the same body as bench/lib.lua's instance_json), so that two runs do the same work; exits
non-zero on the first answer that is not 2xx.
"""
import http.client
import random
import sys
import threading


def main():
    host, port = sys.argv[1].rsplit(':', 1)
    count, threads, prefix = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    services = int(sys.argv[5]) if len(sys.argv) > 5 else 32
    tag = random.randrange(10**9)
    failed = []

    def worker(t):
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        for n in range(count):
            i = n % 200
            body = ('{"address":"10.99.0.%d","port":%d,"tags":["bench"],'
                    '"metadata":{"origin":"wrk"}}' % (i + 1, 8000 + i))
            path = '/v1/services/%s-%d/instances/w%d-%d-%06d' % (prefix, n % services, t, tag, n)
            conn.request('PUT', path, body, {'Content-Type': 'application/json'})
            answer = conn.getresponse()
            answer.read()
            if answer.status >= 300:
                failed.append('%s: HTTP %d' % (path, answer.status))
                return

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if failed:
        sys.exit(failed[0])


if __name__ == '__main__':
    main()
