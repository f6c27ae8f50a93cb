-- Try a Failed job again once its cause is fixed (a claim enlarged after DiskFull, a source back
-- after SourceUnavailable). The operator compares the annotation with
-- status.lastRetryRequestedAt: on a new value it resumes the same run from the newest complete
-- checkpoint (or runs a failed prepare stage again), with a fresh spec.retry.limit budget.
local os = require("os")
if obj.metadata.annotations == nil then obj.metadata.annotations = {} end
obj.metadata.annotations["finetune.dev/retry-requested-at"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
