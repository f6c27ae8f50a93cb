"""Print the benchmark's JSON lines as a compact table (the last thing a GPU run prints)."""

import json
import sys
from pathlib import Path

rows = [json.loads(line) for line in Path(sys.argv[1]).read_text().splitlines() if line.strip()]
for r in rows:
    if r.get("kind") == "run":
        g = r.get
        print(
            f"{g('stack', ''):8} {g('model', ''):3} {g('method', ''):5} {g('data', ''):9} "
            f"gpus={g('gpus', 1)} mb={g('mb')} seq={g('seq')} cap={g('cap_gib')} "
            f"tok/s={g('tokens_per_second')} alloc={g('peak_allocated_gib')} "
            f"res={g('peak_reserved_gib')} first={g('first_step_seconds')} mfu={g('mfu')} "
            f"loss={(g('losses') or [None])[-1]}"
        )
    else:
        print(json.dumps(r)[:200])
