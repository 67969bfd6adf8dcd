-- Argo CD health check for distillery.dev/v1alpha1 Benchmark.
-- Argo CD runs it in Lua 5.1 with only the base and table libraries (no string, no math)
-- unless resource.customizations.useOpenLibs is set, so it uses neither.

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

-- The message (else the reason) of the condition of this type, or nil.
local function condition_message(status, kind)
  for _, c in ipairs(tbl(status.conditions)) do
    if type(c) == "table" and c.type == kind then
      return text(c.message) or text(c.reason)
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

local function health(o)
  local waiting = unobserved(o)
  if waiting ~= nil then
    return "Progressing", waiting
  end
  local status = o.status
  local phase = status.phase
  if phase == "Succeeded" then
    local report = text(status.report)
    local done = condition_message(status, "Complete")
    if done == nil and report ~= nil then
      done = "report written to " .. report
    end
    return "Healthy", done or "benchmark finished"
  elseif phase == "Running" then
    return "Progressing", condition_message(status, "Progressing") or "load generator running"
  elseif phase == "Pending" then
    return "Progressing", condition_message(status, "Progressing") or "waiting for the load generator pod"
  elseif phase == "Suspended" then
    return "Suspended", condition_message(status, "Progressing") or "benchmark suspended"
  elseif phase == "Failed" then
    return "Degraded", condition_message(status, "Failed") or "benchmark failed"
  elseif phase == nil then
    return "Progressing", "Waiting for the operator to report a phase"
  end
  return "Progressing", "unknown phase " .. tostring(phase)
end

local hs = {}
hs.status, hs.message = health(tbl(obj))
return hs
