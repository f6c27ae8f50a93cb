-- Start the job over from step 0. The operator compares the annotation with
-- status.lastRestartRequestedAt: on a new value it stops the trainer pod, sets the existing
-- checkpoints aside, clears progress and attempts, records the value and begins a fresh run
-- (still honouring spec.suspend).
local os = require("os")
if obj.metadata.annotations == nil then obj.metadata.annotations = {} end
obj.metadata.annotations["finetune.dev/restart-requested-at"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
