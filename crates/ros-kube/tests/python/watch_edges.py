"""A watch from a compacted resourceVersion gets 410 Gone (the client must list again), and a
watch that allows bookmarks gets one while nothing changes. For etcd, the test compacts through
etcd's own API (argv[3]); the embedded store compacts itself once enough revisions pass."""
import json
import sys
import urllib.request

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
ns = sys.argv[2]
v1.create_namespace({"metadata": {"name": ns}})
for i in range(int(sys.argv[4])):
    v1.create_namespaced_config_map(ns, {"metadata": {"name": f"c-{i}"}})
rv = v1.list_namespaced_config_map(ns).metadata.resource_version
if sys.argv[3] != "-":
    req = urllib.request.Request(sys.argv[3].replace("etcd://", "http://") + "/v3/kv/compaction",
                                 data=json.dumps({"revision": str(int(rv) - 5)}).encode(), method="POST")
    urllib.request.urlopen(req).read()
try:
    for ev in watch.Watch().stream(v1.list_namespaced_config_map, ns, resource_version="2", timeout_seconds=5):
        sys.exit(f"a watch from a compacted revision got {ev['type']}")
    sys.exit("a watch from a compacted revision ended without an error")
except ApiException as e:
    if e.status != 410:
        sys.exit(f"a watch from a compacted revision got {e.status}, not 410")
seen = []
for ev in watch.Watch().stream(v1.list_namespaced_config_map, ns, resource_version=rv,
                               allow_watch_bookmarks=True, timeout_seconds=15):
    seen.append(ev["type"])
    if ev["type"] == "BOOKMARK":
        break
if "BOOKMARK" not in seen:
    sys.exit(f"no bookmark in 15 s: {seen}")
print("ok")
