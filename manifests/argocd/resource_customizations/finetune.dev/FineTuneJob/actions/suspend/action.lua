-- Pause the job: the operator checkpoints, stops the trainer pod and frees its GPUs.
if obj.spec == nil then obj.spec = {} end
obj.spec.suspend = true
return obj
