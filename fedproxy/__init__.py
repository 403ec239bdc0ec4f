"""fedproxy: a front door and a DNS name for services spread across Kubernetes clusters.

Data flow (each stage is a package or module of its own):

    member API servers --list+watch--> ClusterSnapshot   (discovery/, I/O)
    ClusterSnapshots --build_catalog--> Catalog          (catalog.py, pure)
    Catalog + config + health --> Pools, DNS answers      (balancing/, dns/answer.py, pure)
    Pools --> HTTP | TCP | DNS listeners                  (proxy/, dns/server.py, I/O)
    admin/ reads every stage; runtime.py wires them; sim/ emulates member clusters.
"""

__version__ = "0.1.0"
