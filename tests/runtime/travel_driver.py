"""A client process for the code-that-travels tests (run as a script, from a directory of the test's choice).

Commands (each prints one JSON line; a sopflow error is printed as ``{"error", "message"}``):

- ``bootstrap ADDRESS STATE MAX_MB``: create sopflow's actors on the cluster, with no runtime_env
  of their own beyond the cluster's, the state in STATE; the process then exits (they stay).
- ``submit ADDRESS SOP [WORKING_DIR] [--wait | --exit]``: connect (with WORKING_DIR as the
  runtime_env's working_dir), submit SOP; ``--wait`` waits for the end, ``--exit`` dies at once.
- ``wait ADDRESS ID``: connect without a runtime_env and wait for the execution to end.
- ``has-package ADDRESS URI``: whether the cluster's GCS holds the runtime_env package URI.
"""

from __future__ import annotations

import json
import logging
import os
import sys

NAMESPACE = "sopflow"  # the CLI's, so `sopflow run` inside a Ray job finds the same actors


def main(argv: list[str]) -> None:
    from runtime import Engine
    from runtime.errors import SopflowError

    sys.path.insert(0, os.getcwd())  # like a notebook: modules beside it import here (not on the cluster)
    command, address = argv[0], argv[1]
    try:
        if command == "bootstrap":
            import ray

            from runtime.config import EngineConfig

            ray.init(address=address, namespace=NAMESPACE, logging_level=logging.ERROR, log_to_driver=False)
            engine = Engine(namespace=NAMESPACE, config=EngineConfig(state=argv[2], max_package_mb=int(argv[3])))
            print(json.dumps({"ok": bool(engine.info())}), flush=True)
            return
        if command == "submit":
            sop, rest = argv[2], argv[3:]
            flags = [a for a in rest if a.startswith("--")]
            dirs = [a for a in rest if not a.startswith("--")]
            options = {"runtime_env": {"working_dir": dirs[0]}} if dirs else {}
            engine = Engine.connect(address, namespace=NAMESPACE, logging_level=logging.ERROR, **options)
            eid = engine.submit(sop)
            if "--exit" in flags:
                print(json.dumps({"id": eid}), flush=True)
                os._exit(0)  # the client dies without saying goodbye: its job ends
            view = engine.wait(eid, timeout=180)
            print(json.dumps({"id": eid, "status": view.status.value, "outputs": view.outputs,
                              "steps": {k: s.error for k, s in view.steps.items()}}, default=str), flush=True)
            return
        if command == "wait":
            engine = Engine.connect(address, namespace=NAMESPACE, logging_level=logging.ERROR)
            view = engine.wait(argv[2], timeout=180)
            print(json.dumps({"id": argv[2], "status": view.status.value, "outputs": view.outputs,
                              "steps": {k: s.error for k, s in view.steps.items()}}, default=str), flush=True)
            return
        if command == "has-package":
            import ray
            from ray._private.runtime_env.packaging import package_exists

            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
            print(json.dumps({"exists": package_exists(argv[2])}), flush=True)
            return
        raise SystemExit(f"unknown command {command!r}")
    except SopflowError as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e)}), flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
