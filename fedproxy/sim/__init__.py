"""The member-cluster emulator: Kubernetes API servers and workloads on loopback, for tests, demo, benchmarks.

Glossary
- store (`store.ObjectStore`): objects + one resourceVersion counter + bounded event history; pure.
- API server (`apiserver.FakeApiServer`): the store served over the real Kubernetes REST/watch protocol on
  127.0.0.1, with faults (kill/restart, cut watches, hang, compaction, failing requests).
- objects (`objects`): builders of real-looking API JSON (Service, EndpointSlice, Node, ServiceExport...).
- backends (`backends.HttpEcho`, `backends.TcpEcho`): real servers on 127.x addresses standing for pods
  and kube-proxy paths; they say which cluster/pod answered.
- layout / topology: the demo federation as data (`layout`) and its runner (`topology.Topology`).
- kubeconfig: a kubeconfig file pointing at emulated servers, consumed by kubernetes-asyncio unchanged.

Only the CLI (demo) and tests may import this package; production modules never do.
"""
