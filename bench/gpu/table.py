"""Print the benchmark's JSON lines as a compact table (the last thing a GPU run prints)."""

import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
for r in rows:
    if r.get("kind") == "run":
        print(f"{r.get('stack', ''):8} {r.get('model', ''):3} {r.get('method', ''):5} {r.get('data', ''):9} "
              f"gpus={r.get('gpus', 1)} mb={r.get('mb')} seq={r.get('seq')} cap={r.get('cap_gib')} "
              f"tok/s={r.get('tokens_per_second')} alloc={r.get('peak_allocated_gib')} "
              f"res={r.get('peak_reserved_gib')} first={r.get('first_step_seconds')} mfu={r.get('mfu')} "
              f"loss={(r.get('losses') or [None])[-1]}")
    else:
        print(json.dumps(r)[:200])
