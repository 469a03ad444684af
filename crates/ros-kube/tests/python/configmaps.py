"""The official Python client against ros-kube: 300 configmaps created while a watch started
from the list's resourceVersion follows them, a stale write refused with 409, all deleted.
The watch must see every event, in order, each exactly once. Prints one JSON line of figures."""
import json
import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

N = 300
config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
ns = sys.argv[2]
v1.create_namespace({"metadata": {"name": ns}})
listed = v1.list_namespaced_config_map(ns)
rv = listed.metadata.resource_version
events = []


def follow():
    w = watch.Watch()
    for ev in w.stream(v1.list_namespaced_config_map, ns, resource_version=rv, timeout_seconds=120):
        o = ev["object"]
        events.append((ev["type"], o.metadata.name, int(o.metadata.resource_version)))
        if len(events) >= 2 * N + 1:
            w.stop()


t = threading.Thread(target=follow)
t.start()
time.sleep(0.5)
start = time.time()
for i in range(N):
    v1.create_namespaced_config_map(ns, {"metadata": {"name": f"cm-{i}"}, "data": {"i": str(i)}})
created = time.time() - start
cm = v1.read_namespaced_config_map("cm-0", ns)
cm.data["i"] = "changed"
v1.replace_namespaced_config_map("cm-0", ns, cm)
cm.data["i"] = "stale"
try:
    v1.replace_namespaced_config_map("cm-0", ns, cm)
    sys.exit("a write with a stale resourceVersion was accepted")
except ApiException as e:
    if e.status != 409:
        sys.exit(f"a stale write got {e.status}, not 409")
for i in range(N):
    v1.delete_namespaced_config_map(f"cm-{i}", ns)
t.join(timeout=60)
want = [("ADDED", f"cm-{i}") for i in range(N)] + [("MODIFIED", "cm-0")]
want += [("DELETED", f"cm-{i}") for i in range(N)]
got = [(ty, name) for ty, name, _ in events]
if got != want:
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    sys.exit(f"the watch saw {len(got)} events, want {len(want)}; first difference at {first}: "
             f"{got[first:first + 3]} vs {want[first:first + 3]}")
revs = [r for _, _, r in events]
if revs != sorted(set(revs)):
    sys.exit("the watch's resourceVersions are not strictly increasing")
left = v1.list_namespaced_config_map(ns).items
if left:
    sys.exit(f"{len(left)} configmaps left after deleting them all")
print(json.dumps({"events": len(events), "create_seconds": round(created, 3)}))
