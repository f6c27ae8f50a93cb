-- Continue the job from its newest complete checkpoint.
if obj.spec == nil then obj.spec = {} end
obj.spec.suspend = false
return obj
