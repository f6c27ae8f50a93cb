-- Argo CD action discovery for finetune.dev/FineTuneJob (sandbox: no string/math/io library).
--   suspend: while the job may still train and spec.suspend is not true
--   resume:  while spec.suspend is true (and the job has not finished)
--   restart: once the job has started (Queued, Running, Suspended, Succeeded, Failed) and no
--            restart is already waiting for the operator
--   retry:   a Failed job, when no retry or restart is already waiting for the operator
local actions = {}
local phase = nil
if obj.status ~= nil then phase = obj.status.phase end
local finished = phase == "Succeeded" or phase == "Failed"
local suspended = obj.spec ~= nil and obj.spec.suspend == true

-- an annotation value the operator has not recorded in status[field] yet
local function waiting(annotation, field)
  local requested = nil
  if obj.metadata.annotations ~= nil then requested = obj.metadata.annotations[annotation] end
  local handled = nil
  if obj.status ~= nil then handled = obj.status[field] end
  return requested ~= nil and requested ~= handled
end
local restartPending = waiting("finetune.dev/restart-requested-at", "lastRestartRequestedAt")
local retryPending = waiting("finetune.dev/retry-requested-at", "lastRetryRequestedAt")
local restartable = phase == "Queued" or phase == "Running" or phase == "Suspended"
  or phase == "Succeeded" or phase == "Failed"

actions["suspend"] = {
  ["disabled"] = finished or suspended,
  ["iconClass"] = "fa fa-fw fa-pause-circle",
  ["displayName"] = "Suspend (checkpoint and free the GPUs)",
}
actions["resume"] = {
  ["disabled"] = finished or not suspended,
  ["iconClass"] = "fa fa-fw fa-play-circle",
  ["displayName"] = "Resume from the newest checkpoint",
}
actions["restart"] = {
  ["disabled"] = restartPending or not restartable,
  ["iconClass"] = "fa fa-fw fa-redo",
  ["displayName"] = "Restart from step 0",
}
actions["retry"] = {
  ["disabled"] = retryPending or restartPending or phase ~= "Failed",
  ["iconClass"] = "fa fa-fw fa-undo",
  ["displayName"] = "Retry from the newest checkpoint",
}
return actions
