"""Creates configmaps through the official Python client as fast as one client can, while the
server may go away (its container killed, the machine powered off): a write is acknowledged
when the server answered 201, and only those are counted. Retries the same object until the
deadline. Writes the acknowledged names, one per line, to the output file as it goes."""
import sys
import time

from kubernetes import client, config
from kubernetes.client.rest import ApiException

kubeconfig, ns, count, out, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
config.load_kube_config(config_file=kubeconfig)
cfg = client.Configuration.get_default_copy()
cfg.retries = 0
v1 = client.CoreV1Api(client.ApiClient(cfg))
deadline = time.time() + seconds
acked = open(out, "w", buffering=1)
i = 0
failures = 0
while i < count and time.time() < deadline:
    try:
        v1.create_namespaced_config_map(ns, {"metadata": {"name": f"w-{i}"}, "data": {"i": str(i)}},
                                        _request_timeout=5)
        acked.write(f"w-{i}\n")
        i += 1
    except ApiException as e:
        if e.status == 409:
            i += 1  # written before a lost answer: present, but not counted as acknowledged
        else:
            failures += 1
            time.sleep(0.2)
    except Exception:
        failures += 1
        time.sleep(0.2)
acked.close()
print(f"{i} {failures}")
