-- Argo CD health check for distillery.dev/v1alpha1 ModelDeployment.
-- Argo CD runs it in Lua 5.1 with only the base and table libraries (no string, no math)
-- unless resource.customizations.useOpenLibs is set, so it uses neither.

local PAUSED = "rollout paused: analysis failed; annotate distillery.dev/promote, abort or retry"
local HEX = {
  "0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
  "a", "b", "c", "d", "e", "f", "A", "B", "C", "D", "E", "F",
}

-- A non-empty string, else nil.
local function text(v)
  if type(v) == "string" and v ~= "" then
    return v
  end
  return nil
end

local function number(v)
  if type(v) == "number" then
    return v
  end
  return nil
end

-- v when it is a table, else an empty one: every nested read goes through it.
local function tbl(v)
  if type(v) == "table" then
    return v
  end
  return {}
end

-- Whether s starts with prefix (for printable ASCII), by comparison alone.
local function starts_with(s, prefix)
  return prefix <= s and s < prefix .. "\127"
end

-- The first n hex digits of s after lead, which s starts with; nil when s has fewer.
local function hex_after(s, lead, n)
  local found = ""
  for _ = 1, n do
    local longer = nil
    for _, c in ipairs(HEX) do
      if starts_with(s, lead .. found .. c) then
        longer = found .. c
        break
      end
    end
    if longer == nil then
      return nil
    end
    found = longer
  end
  return found
end

-- A digest cut to its first 12 hex digits (found by comparison: no string library), or as it is.
local function short_digest(digest)
  if digest == nil then
    return nil
  end
  local lead = ""
  if starts_with(digest, "sha256:") then
    lead = "sha256:"
  end
  return hex_after(digest, lead, 12) or digest
end

local function condition(status, kind)
  for _, c in ipairs(tbl(status.conditions)) do
    if type(c) == "table" and c.type == kind then
      return c
    end
  end
  return nil
end

-- Why the operator has not caught up with the spec, or nil when it has.
local function unobserved(o)
  local generation = number(tbl(o.metadata).generation)
  local observed = number(tbl(o.status).observedGeneration)
  if type(o.status) == "table" and observed ~= nil and (generation == nil or observed >= generation) then
    return nil
  end
  if generation == nil then
    return "Waiting for the operator to observe the resource"
  end
  return "Waiting for the operator to observe generation " .. generation
end

local function stable_summary(stable)
  local digest = short_digest(text(stable.modelDigest))
  local message = "all traffic on the stable model"
  if digest ~= nil then
    message = "all traffic on model " .. digest
  end
  local ready = number(stable.readyReplicas)
  if ready == 1 then
    message = message .. " (1 ready replica)"
  elseif ready ~= nil then
    message = message .. " (" .. ready .. " ready replicas)"
  end
  return message
end

local function canary_step(o, status)
  local canary = tbl(status.canary)
  local step = number(status.currentStep)
  local weight = number(canary.weight)
  local revision = number(canary.revision)
  if step == nil and weight == nil and revision == nil then
    return nil
  end
  local message = "canary"
  if step ~= nil then
    message = "canary step " .. (step + 1)
    local steps = tbl(tbl(tbl(o.spec).rollout).steps)
    if #steps > 0 then
      message = message .. "/" .. #steps
    end
  end
  if weight ~= nil then
    message = message .. " at " .. weight .. "%"
  end
  if revision ~= nil then
    message = message .. " (revision " .. revision .. ")"
  end
  return message
end

local function rolled_back(status)
  local rejected = status.rejectedModel
  if type(rejected) ~= "table" then
    return text(status.message) or "rolled back"
  end
  local model = short_digest(text(rejected.modelDigest)) or text(rejected.modelUri) or "the canary"
  local why = text(rejected.reason)
  if why == nil then
    local checks = {}
    for _, check in ipairs(tbl(rejected.failedChecks)) do
      if text(check) ~= nil then
        table.insert(checks, check)
      end
    end
    if #checks > 0 then
      why = table.concat(checks, "; ")
    end
  end
  if why == nil then
    return "rolled back " .. model
  end
  return "rolled back " .. model .. ": " .. why
end

local function failing_condition(status)
  for _, kind in ipairs({ "Accepted", "ModelReady", "Available" }) do
    local c = condition(status, kind)
    if c ~= nil and c.status == "False" then
      local message = text(c.message) or text(c.reason)
      if message ~= nil then
        return message
      end
    end
  end
  return nil
end

local function health(o)
  local waiting = unobserved(o)
  if waiting ~= nil then
    return "Progressing", waiting
  end
  local status = o.status
  local phase = status.phase
  local message = text(status.message)
  if phase == "Healthy" then
    return "Healthy", message or stable_summary(tbl(status.stable))
  elseif phase == "Progressing" then
    return "Progressing", canary_step(o, status) or message or "rollout in progress"
  elseif phase == "Paused" then
    return "Suspended", message or PAUSED
  elseif phase == "RolledBack" then
    return "Degraded", rolled_back(status)
  elseif phase == "Degraded" then
    return "Degraded", message or failing_condition(status) or "degraded"
  elseif phase == nil then
    return "Progressing", message or "Waiting for the operator to report a phase"
  end
  return "Progressing", message or ("unknown phase " .. tostring(phase))
end

local hs = {}
hs.status, hs.message = health(tbl(obj))
return hs
