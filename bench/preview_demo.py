"""`fedaudit audit preview` on the demo's federation: the figures for the issue-11 note.

Generates the demo's synthetic federation (5 x 3,000 candidates), imports each bundle,
serves the nodes on loopback with the demo's policy and runs the real `audit preview`
command with the default plan for the sizes asked (default: 300 and 3,000).

    .venv/bin/python bench/preview_demo.py [--sizes 300,3000] [--seed 7]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from fedaudit.cli.groups.demo import DEMO_REQUESTER, DEMO_RHO_PER_PERIOD
from fedaudit.cli.main import main
from fedaudit.coordinator.planning.default_plan import default_plan_path
from fedaudit.node.ingest.bundle import import_bundle
from fedaudit.node.privacy.policy import example_policy
from fedaudit.node.query.service import NodeService
from fedaudit.node.server import start_node_server
from fedaudit.node.store.db import make_engine
from fedaudit.synthetic.federation import generate_federation


def run(sizes: str, seed: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="preview-demo-"))
    fed = generate_federation(work / "bundles", seed=seed)
    policy = example_policy({DEMO_REQUESTER: DEMO_RHO_PER_PERIOD}, max_rho_per_request=1.0)
    servers, engines, nodes = [], [], []
    try:
        for bundle in fed.bundles:
            engine = make_engine(str(work / f"{bundle.name}.db"))
            engines.append(engine)
            import_bundle(engine, bundle)
            server = start_node_server(NodeService(engine, policy), host="127.0.0.1", port=0)
            servers.append(server)
            nodes += ["--node", f"{bundle.name}=127.0.0.1:{server.port}"]
        main(["audit", "preview", str(default_plan_path()), "--insecure", "--sizes", sizes, *nodes])
    finally:
        for s in servers:
            s.stop(grace=None)
        for e in engines:
            e.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="300,3000")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    run(args.sizes, args.seed)
