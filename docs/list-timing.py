import sys, ssl, time, http.client, threading, yaml, urllib.parse, json
kc = yaml.safe_load(open(sys.argv[1]))
server = kc['clusters'][0]['cluster']['server']
ca = kc['clusters'][0]['cluster']['certificate-authority']
token = kc['users'][0]['user']['token']
host = urllib.parse.urlparse(server)
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False
def varint(b, i):
    x = 0; s = 0
    while True:
        c = b[i]; i += 1; x |= (c & 0x7f) << s; s += 7
        if c < 0x80: return x, i
def fields(b, i, end):
    while i < end:
        key, i = varint(b, i); f, wt = key >> 3, key & 7
        if wt == 2:
            n, i = varint(b, i); yield f, i, i + n; i += n
        elif wt == 0:
            v, i = varint(b, i); yield f, v, None
        else: raise Exception('wt %d' % wt)
def cont_of(body):
    assert body[:4] == b'k8s\0'
    for f, s, e in fields(body, 4, len(body)):
        if f == 2:
            for f2, s2, e2 in fields(body, s, e):
                if f2 == 1:
                    for f3, s3, e3 in fields(body, s2, e2):
                        if f3 == 3: return body[s3:e3].decode()
                    return ''
    return ''
def lst(path, limit, out):
    c = http.client.HTTPSConnection(host.hostname, host.port, context=ctx)
    t0 = time.monotonic(); cont = ''; total = 0; pages = 0
    while True:
        q = {'limit': str(limit)} if limit else {}
        if RV0 and not cont: q['resourceVersion'] = '0'
        if SEL: q['labelSelector'] = '!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless'
        if SEL and 'services' in path: q['fieldSelector'] = 'spec.clusterIP!=None'
        if cont: q['continue'] = cont
        c.request('GET', path + '?' + urllib.parse.urlencode(q), headers={'Authorization': 'Bearer ' + token, 'Accept': 'application/vnd.kubernetes.protobuf'})
        r = c.getresponse(); body = r.read(); assert r.status == 200, (r.status, body[:200])
        total += len(body); pages += 1
        cont = cont_of(body)
        if not cont: break
    out[path] = (time.monotonic() - t0, total, pages)
S = '/api/v1/namespaces/bench/services'; E = '/apis/discovery.k8s.io/v1/namespaces/bench/endpointslices'
import subprocess, os
def cpu(pid):
    f = open('/proc/%d/stat' % pid).read().rsplit(')', 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK')
api = int(subprocess.check_output(['pgrep', '-f', 'kube-apiserver --']).split()[0])
SEL = len(sys.argv) > 4
import os
RV0 = os.environ.get('RV0') == '1'
res = []
for limit in [int(x) for x in sys.argv[2].split(',')]:
    for rnd in range(int(sys.argv[3])):
        for mode in ['both', 'services', 'slices']:
            out = {}; t0 = time.monotonic(); c0 = cpu(api)
            paths = {'both': [S, E], 'services': [S], 'slices': [E]}[mode]
            ts = [threading.Thread(target=lst, args=(p, limit, out)) for p in paths]
            [t.start() for t in ts]; [t.join() for t in ts]
            line = dict(limit=limit, round=rnd, mode=mode, wall=round(time.monotonic()-t0, 3), api_cpu=round(cpu(api)-c0, 2), **{k.split('/')[-1]: (round(v[0],3), v[1], v[2]) for k, v in out.items()})
            print(json.dumps(line), flush=True); res.append(line)
