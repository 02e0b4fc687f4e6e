# Closed-loop keep-alive HTTP client: python3 keepalive_client.py PORT N [PATH] [CONNECTIONS=8]
# sends N GETs over CONNECTIONS persistent connections and counts non-200 answers.
import http.client, sys, threading
port=int(sys.argv[1]); n=int(sys.argv[2]); path=sys.argv[3] if len(sys.argv)>3 else "/proxy"; conns=int(sys.argv[4]) if len(sys.argv)>4 else 8
bad=[0]
def worker(k):
    c=http.client.HTTPConnection("127.0.0.1",port,timeout=60)
    for i in range(k):
        c.request("GET",path); r=c.getresponse(); r.read()
        if r.status!=200: bad[0]+=1
ts=[threading.Thread(target=worker,args=(n//conns,)) for _ in range(conns)]
[t.start() for t in ts]; [t.join() for t in ts]
print("done", n, "bad", bad[0])
