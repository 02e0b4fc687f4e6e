# Splits a callgrind profile (self cost) by library and, for Switchboard, by source module.
# python3 callgrind_split.py CALLGRIND_OUT REQUESTS
import subprocess, sys, re, collections
f=sys.argv[1]; n=int(sys.argv[2])
out=subprocess.run(["callgrind_annotate","--inclusive=no","--threshold=100","--auto=no",f],capture_output=True,text=True).stdout
groups=collections.Counter(); total=0
for line in out.splitlines():
    m=re.match(r'\s*([\d,]+) (?:\([^)]*\))?\s+(.*)$', line)
    if not m: continue
    ir=int(m.group(1).replace(',','')); rest=m.group(2)
    if 'PROGRAM TOTALS' in rest: total=ir; continue
    if total and ir >= 0.99*total: continue
    obj=re.search(r'\[([^\]]+)\]\s*$', rest); obj=obj.group(1) if obj else '?'
    src=rest.split(':')[0]
    if 'libcurl' in obj: g='libcurl'
    elif 'libswiftCore' in obj: g='Swift runtime (retain/release, alloc, generics)'
    elif 'libc.so' in obj:
        g='libc malloc/free' if 'malloc' in src else 'libc other (memcpy, sscanf, getenv, syscall wrappers)'
    elif 'switchboard' in obj or 'Sources' in src or 'compiler-generated' in src:
        mm=re.search(r'Sources/([A-Za-z0-9]+)/', src)
        g='ours: '+(mm.group(1) if mm else 'compiler-generated/stdlib specialisations')
    else: g=obj.split('/')[-1]
    groups[g]+=ir
s=sum(groups.values())
print(f"total {total/n:.0f} Ir/request (self-sum {s/n:.0f})")
for g,v in groups.most_common(): print(f"{v/n:8.0f}  {100*v/s:5.1f}%  {g}")
