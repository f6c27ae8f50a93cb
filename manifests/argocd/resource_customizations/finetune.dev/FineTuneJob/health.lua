-- Argo CD health check for finetune.dev/FineTuneJob.
-- Runs in Argo CD's Lua sandbox (gopher-lua, Lua 5.1; base, table and a safe os library only):
-- no string, math or io library and no method calls on strings.
--   Succeeded -> Healthy; Failed -> Degraded (reason: message); Suspended -> Suspended;
--   Pending, Preparing, Queued, Starting, Running, Suspending -> Progressing (step/total, loss);
--   no status yet, or status.observedGeneration behind metadata.generation -> Progressing;
--   Succeeded or Failed with metadata.generation beyond status.completedGeneration (the spec was
--   edited after the job ended and never trained) -> Degraded.
local hs = {}

local function round(x, digits)
  local scale = 1
  for _ = 1, digits do scale = scale * 10 end
  local n = x * scale + 0.5
  return (n - n % 1) / scale
end

local function condition(status, ctype)
  if status.conditions == nil then return nil end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then return c end
  end
  return nil
end

local function progressText(status, withEta)
  local p = status.progress
  if p == nil or p.step == nil then return nil end
  local text = "step " .. p.step
  if p.totalSteps ~= nil and p.totalSteps > 0 then
    text = text .. "/" .. p.totalSteps .. " (" .. round(p.step * 100 / p.totalSteps, 0) .. "%)"
  end
  if p.loss ~= nil then text = text .. ", loss " .. round(p.loss, 3) end
  if withEta and p.etaSeconds ~= nil and p.etaSeconds > 0 then
    local minutes = round(p.etaSeconds / 60, 0)
    text = text .. ", ETA " .. minutes .. "m"
  end
  return text
end

local function join(head, tail)
  if tail == nil or tail == "" then return head end
  return head .. ": " .. tail
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end

local generation = obj.metadata.generation
local observed = status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local phase = status.phase
local done = status.completedGeneration
if (phase == "Succeeded" or phase == "Failed") and done ~= nil and generation ~= nil
    and generation > done then
  hs.status = "Degraded"
  hs.message = "Spec changed after completion (generation " .. generation
    .. "; it finished with generation " .. done .. ") and was not trained: "
    .. "`kubectl finetune restart` to retrain"
  return hs
end

if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = status.message or "Training succeeded"
  return hs
end

if phase == "Failed" then
  local reason = status.reason
  local message = status.message
  local failed = condition(status, "Failed") or condition(status, "Stalled")
  if failed ~= nil then
    reason = reason or failed.reason
    if message == nil or message == "" then message = failed.message end
  end
  hs.status = "Degraded"
  hs.message = join(reason or "Failed", message)
  return hs
end

if phase == "Suspended" then
  hs.status = "Suspended"
  local text = progressText(status, false)
  if text ~= nil then
    hs.message = "Suspended at " .. text
  else
    hs.message = join("Suspended", status.message)
  end
  return hs
end

hs.status = "Progressing"
if phase == "Running" or phase == "Suspending" then
  hs.message = join(phase, progressText(status, true) or status.message)
else
  hs.message = join(phase, status.message)
end
return hs
